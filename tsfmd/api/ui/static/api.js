// Every call the page makes to tsfmd goes through `call`: it sends the token the user
// pasted (kept in sessionStorage, so it ends with the tab) as `Authorization: Bearer`,
// and turns any answer that is not 2xx into an ApiError carrying tsfmd's own error text.

const TOKEN_KEY = "tsfmd.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  const trimmed = value.trim();
  if (trimmed) sessionStorage.setItem(TOKEN_KEY, trimmed);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, message, path) {
    super(message);
    this.status = status;
    this.path = path;
  }

  get needsToken() {
    return this.status === 401 || this.status === 403;
  }
}

export async function call(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const bearer = token();
  if (bearer) headers.set("Authorization", `Bearer ${bearer}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers, cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, `tsfmd did not answer (${err.message})`, path);
  }
  const text = await response.text();
  const body = parseJson(text);
  if (!response.ok) {
    throw new ApiError(response.status, errorText(body, text, response), path);
  }
  if (body === undefined) {
    throw new ApiError(response.status, `${path} answered something that is not JSON`, path);
  }
  return body;
}

export function postJson(path, payload) {
  return call(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(payload),
  });
}

function parseJson(text) {
  try {
    return text ? JSON.parse(text) : undefined;
  } catch {
    return undefined;
  }
}

// tsfmd answers {"status":"error","error":...}; problem+json answers carry detail/title.
function errorText(body, text, response) {
  if (body && typeof body === "object") {
    const message = body.error || body.detail || body.title;
    if (message) return String(message);
  }
  if (text) return text.slice(0, 500);
  return response.statusText || "no reason given";
}
