"""The wire contract: methods @0..@20 exactly as specified, our additions appended after them."""

from __future__ import annotations

from quicnprotochat.common.schema import node_schema, node_service_methods

SPECIFIED_METHODS = [
    "uploadKeyPackage",
    "fetchKeyPackage",
    "enqueue",
    "fetch",
    "fetchWait",
    "health",
    "uploadHybridKey",
    "fetchHybridKey",
    "opaqueRegisterStart",
    "opaqueRegisterFinish",
    "opaqueLoginStart",
    "opaqueLoginFinish",
    "publishEndpoint",
    "resolveEndpoint",
    "peek",
    "ack",
    "fetchHybridKeys",
    "batchEnqueue",
    "createChannel",
    "resolveUser",
    "resolveIdentity",
]

# name -> (parameter names in order, result names in order) as the specification gives them.
SPECIFIED_SIGNATURES = {
    "uploadKeyPackage": (["identityKey", "package", "auth"], ["fingerprint"]),
    "fetchKeyPackage": (["identityKey", "auth"], ["package"]),
    "enqueue": (["recipientKey", "payload", "channelId", "version", "auth"], ["seq"]),
    "fetch": (["recipientKey", "channelId", "version", "auth", "limit"], ["payloads"]),
    "fetchWait": (["recipientKey", "channelId", "version", "timeoutMs", "auth", "limit"], ["payloads"]),
    "health": ([], ["status"]),
    "uploadHybridKey": (["identityKey", "hybridPublicKey", "auth"], []),
    "fetchHybridKey": (["identityKey", "auth"], ["hybridPublicKey"]),
    "opaqueRegisterStart": (["username", "request"], ["response"]),
    "opaqueRegisterFinish": (["username", "upload", "identityKey"], ["success"]),
    "opaqueLoginStart": (["username", "request"], ["response"]),
    "opaqueLoginFinish": (["username", "finalization", "identityKey"], ["sessionToken"]),
    "publishEndpoint": (["identityKey", "nodeAddr", "auth"], []),
    "resolveEndpoint": (["identityKey", "auth"], ["nodeAddr"]),
    "peek": (["recipientKey", "channelId", "version", "auth", "limit"], ["payloads"]),
    "ack": (["recipientKey", "channelId", "version", "seqUpTo", "auth"], []),
    "fetchHybridKeys": (["identityKeys", "auth"], ["keys"]),
    "batchEnqueue": (["recipientKeys", "payload", "channelId", "version", "auth"], ["seqs"]),
    "createChannel": (["peerKey", "auth"], ["channelId"]),
    "resolveUser": (["username", "auth"], ["identityKey"]),
    "resolveIdentity": (["identityKey", "auth"], ["username"]),
}


def _field_names(struct_schema: object) -> list[str]:
    node = struct_schema.node  # type: ignore[attr-defined]
    return [field.name for field in sorted(node.struct.fields, key=lambda f: f.codeOrder)]


def test_specified_methods_keep_their_ordinals() -> None:
    methods = node_service_methods()
    for ordinal, name in enumerate(SPECIFIED_METHODS):
        assert methods[name] == ordinal, name


def test_specified_parameters_and_results_keep_their_order() -> None:
    interface = node_schema().NodeService.schema
    for name, (params, results) in SPECIFIED_SIGNATURES.items():
        method = interface.methods[name]
        # A specified parameter list may only grow at its end.
        assert _field_names(method.param_type)[: len(params)] == params, name
        assert _field_names(method.result_type)[: len(results)] == results, name


def test_additions_only_append() -> None:
    methods = node_service_methods()
    assert methods["serverInfo"] == 21
    assert methods["logout"] == 22
    assert methods["peekWait"] == 23
    assert methods["nodeStatus"] == 24
    assert methods["submitCommit"] == 25
    assert methods["putBlob"] == 26
    assert methods["getBlob"] == 27
    assert methods["fetchCoffer"] == 28
    assert methods["authChallenge"] == 29
    assert methods["authRespond"] == 30
    assert methods["botApprovalWait"] == 31
    assert methods["botApprovalAnswer"] == 32
    assert methods["listBots"] == 33
    assert methods["revokeBot"] == 34
    assert sorted(methods.values()) == list(range(len(methods)))


def test_fetch_coffer_names_no_key() -> None:
    # A bot's shard is chosen by its session alone: no parameter could name another key's shard.
    method = node_schema().NodeService.schema.methods["fetchCoffer"]
    assert (_field_names(method.param_type), _field_names(method.result_type)) == (["auth"], ["shard"])


def test_interface_id_is_the_specified_one() -> None:
    # Cap'n Proto RPC calls carry the interface id; it derives from the file id the specification fixed.
    schema = node_schema()
    assert schema.schema.node.id == 0xD5CA5648A9CC1C28
    assert schema.NodeService.schema.node.scopeId == 0xD5CA5648A9CC1C28


def test_structs_keep_their_fields() -> None:
    schema = node_schema()
    assert _field_names(schema.Auth.schema) == ["version", "accessToken", "deviceId"]
    assert _field_names(schema.Envelope.schema) == ["seq", "data"]
    assert _field_names(schema.ServerInfo.schema)[:5] == [
        "nodeVersion",
        "protocolVersion",
        "certFingerprint",
        "allowSealedSender",
        "limits",
    ]


def test_submit_commit_signature() -> None:
    schema = node_schema()
    method = schema.NodeService.schema.methods["submitCommit"]
    assert _field_names(method.param_type) == [
        "groupId",
        "epoch",
        "message",
        "deliveries",
        "welcomes",
        "members",
        "auth",
    ]
    assert _field_names(method.result_type) == ["result"]
    assert _field_names(schema.Delivery.schema) == ["recipientKey", "channelId", "payload"]
    assert _field_names(schema.CommitResult.schema) == ["outcome", "epoch", "seqs"]
    assert list(schema.CommitResult.Outcome.schema.enumerants) == ["accepted", "duplicate", "stale"]
