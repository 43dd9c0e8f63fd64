"""The protocol's exception tree: every failure to trust or parse a wire object."""


class EdgefleetError(Exception):
    """Root of every part's exception tree: an error the user can act on.

    The CLI prints its message on one line and exits with status 2; anything else is a bug and
    keeps its traceback.
    """


class ProtocolError(EdgefleetError):
    """Base class: a message, manifest or bundle that cannot be accepted."""


class MessageError(ProtocolError):
    """A wire message that does not parse or does not match its schema."""


class TopicError(ProtocolError):
    """A topic outside the edgefleet namespace or with an invalid device id."""


class BundleError(ProtocolError):
    """A bundle archive that is malformed, unsafe to extract or inconsistent with its manifest."""


class SignatureError(BundleError):
    """A bundle whose signature is missing, invalid or made by a key that is not trusted."""


class KeyFileError(ProtocolError):
    """A key file that is missing or is not an Ed25519 key of the expected kind."""
