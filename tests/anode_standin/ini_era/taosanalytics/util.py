"""Option-string parsing as the anode does it: "algo=x,rows=10,host=..." -> dict of str."""


def parse_options(option_str):
    options = {}
    for item in (option_str or "").split(","):
        if "=" not in item or len(item.strip()) < 3:
            continue
        key, value = item.strip().split("=")[:2]
        if key.strip() and value.strip():
            options[key.strip()] = value.strip()
    return options
