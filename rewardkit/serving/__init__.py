"""Reward models in another process: ``rewardkit serve-reward`` (:mod:`.command`, :mod:`.app`,
:mod:`.service`, :mod:`.batcher`) and the client the ``remote`` reward model uses
(:mod:`.client`), speaking the protocol of :mod:`.protocol` (docs/remote_rewards.md).

Nothing is imported here: the server's libraries (starlette, uvicorn) load only when a server
starts.
"""
