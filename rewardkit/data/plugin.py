"""Built-in data plugin: registers the ``rewardkit data`` command group through the public hooks."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_commands(register):
    """``rewardkit data encode``: pre-encode a dataset to latent shards."""
    from .cli import data_app

    register(data_app, name="data", help="Prepare training data (encode a dataset to latents once).")
