"""Install a bundle the way an agent does: verify (signature, hashes, the runtime loads the model
as the manifest describes), stage into a model store, and run the agent's smoke test, in every
runtime the manifest says loads the model. The agent's own code, not a copy of it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from agent.serving import ActiveModel
from agent.store import ModelStore
from agent.update.smoke import smoke
from agent.update.steps import stage, verify
from protocol.bundle import read_bundle
from protocol.signing import TrustedKeys
from runtime import RuntimeName, installed_runtimes


def install_on_agent(bundle: Path, public_key: Path, state_dir: Path) -> dict[RuntimeName, ActiveModel]:
    """The model the agent serves after installing the bundle, per runtime; raises the agent's
    error when it does not install."""
    trusted = TrustedKeys.from_paths([public_key])
    manifest = read_bundle(bundle).verify(trusted)
    runtimes = [
        info.name
        for info in installed_runtimes()
        if info.name in manifest.runtimes and manifest.runtimes[info.name].loads
    ]
    assert runtimes, f"{bundle}: the manifest names no installed runtime that loads the model"
    sha256 = hashlib.sha256(bundle.read_bytes()).hexdigest()
    store = ModelStore(state_dir).open()
    served = {}
    for runtime in runtimes:
        verify(bundle, trusted, runtime, threads=1)
        stage(store, bundle, sha256)
        served[runtime] = smoke(store, sha256, runtime, threads=1)
    return served
