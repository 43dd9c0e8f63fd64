"""The agent's verify step judges a bundle file by its headers and signature before its data."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import VerifyError
from agent.update.steps import verify
from protocol.signing import TrustedKeys, generate_private_key
from tests.support.bundle_files import huge_model_bundle, sparse_bundle


def test_a_sparse_member_fails_the_bundle_check(tmp_path: Path) -> None:
    path = sparse_bundle(tmp_path / "sparse.bundle", "gnu")
    trusted = TrustedKeys([generate_private_key().public_key()])
    with pytest.raises(VerifyError, match=r"bundle check failed: .*'model\.tflite' is a GNU sparse file"):
        verify(path, trusted, runtime="auto", threads=1)


def test_an_untrusted_huge_bundle_fails_the_signature_check(tmp_path: Path) -> None:
    # 400 MiB claimed, within the agent's 512 MiB limit, so only the signature can refuse it.
    path, untrusted = huge_model_bundle(tmp_path / "huge.bundle", key_trusted=False, claimed=400 << 20)
    with pytest.raises(VerifyError, match=r"signature check failed: .*not trusted here"):
        verify(path, untrusted, runtime="auto", threads=1)
