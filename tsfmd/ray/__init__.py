"""tsfmd on Ray Serve: the same registry, families, batcher and routes, scaled out.

`tsfmd ray config` (config.py) writes the `serve deploy` config of a registry; the
applications in it import `tsfmd.ray:app` (the ingress, ingress.py) and `tsfmd.ray:model`
(one per model, replica.py). Ray is an optional extra (`pip install tsfmd[ray]`): nothing
imports it until Serve asks for one of those two builders.
"""


def __getattr__(name: str):
    if name == "app":
        from tsfmd.ray.ingress import app

        return app
    if name == "model":
        from tsfmd.ray.replica import model

        return model
    raise AttributeError(f"module 'tsfmd.ray' has no attribute {name!r}")
