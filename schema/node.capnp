# The wire contract of a quicnprotochat node.
#
# Methods @0..@20 keep the names, ordinals and parameter/result types of the interface the node was specified
# with, and the file id below is that interface's id: Cap'n Proto derives interface ids from it, and RPC calls
# carry those ids, so clients written against the original interface keep working unchanged. Everything we add
# only appends: new methods from @21 on, new fields at the end of a parameter or result list.
@0xd5ca5648a9cc1c28;

interface NodeService {
  # ── Directories ────────────────────────────────────────────────────────────────────────────────────────────
  # Store a TLS-encoded MLS KeyPackage of `identityKey` (the caller's own Ed25519 key). The node validates it
  # and returns its SHA-256 fingerprint. Packages are single-use unless marked last-resort.
  uploadKeyPackage @0 (identityKey :Data, package :Data, auth :Auth) -> (fingerprint :Data);

  # Take one KeyPackage of `identityKey` (removed atomically; a last-resort one is returned without removal
  # when no other is left). Empty when none is stored.
  fetchKeyPackage @1 (identityKey :Data, auth :Auth) -> (package :Data);

  # ── Inboxes ────────────────────────────────────────────────────────────────────────────────────────────────
  # Append `payload` to the inbox (recipientKey, channelId); an empty channelId is the recipient's default
  # inbox. `version` is the wire version and must be 1. Returns the inbox's next sequence number, only once the
  # message is durable.
  # idempotencyKey (appended; optional, 1 to 64 bytes, random per message): a retry of this enqueue with the same
  # key, after a lost connection or `unknown_outcome:`, gets the seq the first call got and stores nothing
  # again. The node remembers a key per sender (per connection for sealed sender) for `idempotency_window_s`;
  # the same key with another message is `invalid_argument:`.
  enqueue @2 (recipientKey :Data, payload :Data, channelId :Data, version :UInt16, auth :Auth, idempotencyKey :Data) -> (seq :UInt64);

  # AT MOST ONCE. Remove and return up to `limit` queued envelopes in seq order (0 = as many as the node's cap
  # allows). They are gone from the node as the reply leaves it: a client that crashes or loses the connection
  # before storing them loses them. Clients that must not lose messages use peekWait (or peek) + ack.
  fetch @3 (recipientKey :Data, channelId :Data, version :UInt16, auth :Auth, limit :UInt32) -> (payloads :List(Envelope));

  # AT MOST ONCE, as fetch. Like fetch, but when the inbox is empty wait until something is enqueued or
  # `timeoutMs` passes (the node caps the wait); then drain as fetch does. The at-least-once form is peekWait.
  fetchWait @4 (recipientKey :Data, channelId :Data, version :UInt16, timeoutMs :UInt64, auth :Auth, limit :UInt32) -> (payloads :List(Envelope));

  # Health probe; needs no authentication. "ok", or "unhealthy: " and what is wrong (store unreachable, store
  # writer down, disk low); nodeStatus has the details.
  health @5 () -> (status :Text);

  # Publish the caller's hybrid (X-Wing: X25519 + ML-KEM-768) public key used to seal envelopes to it.
  uploadHybridKey @6 (identityKey :Data, hybridPublicKey :Data, auth :Auth) -> ();

  # Read a peer's hybrid public key; empty when none is published.
  fetchHybridKey @7 (identityKey :Data, auth :Auth) -> (hybridPublicKey :Data);

  # ── Accounts: OPAQUE (RFC 9807) registration and login ─────────────────────────────────────────────────────
  # Usernames are NFKC-normalized and case-folded, then must be 3 to 32 of [a-z0-9_.-].
  # `identitySig` (appended to the specified parameters) proves possession of `identityKey`: an Ed25519
  # signature by that key over the transcript defined in quicnprotochat.common.transcripts. Without a valid one
  # the call is refused.
  opaqueRegisterStart @8 (username :Text, request :Data) -> (response :Data);

  # Creates the account username -> (password file, identityKey); one account per username and per key.
  opaqueRegisterFinish @9 (username :Text, upload :Data, identityKey :Data, identitySig :Data) -> (success :Bool);

  # The login state between start and finish is kept by the node for a short time, for this connection only.
  opaqueLoginStart @10 (username :Text, request :Data) -> (response :Data);

  # Returns a 32-byte bearer token for Auth.accessToken; identityKey must be the account's.
  opaqueLoginFinish @11 (username :Text, finalization :Data, identityKey :Data, identitySig :Data) -> (sessionToken :Data);

  # ── Peer-to-peer endpoints ─────────────────────────────────────────────────────────────────────────────────
  # Publish the caller's direct-connection address (opaque bytes, size-limited by the node).
  publishEndpoint @12 (identityKey :Data, nodeAddr :Data, auth :Auth) -> ();

  # Read a peer's published address; empty when none.
  resolveEndpoint @13 (identityKey :Data, auth :Auth) -> (nodeAddr :Data);

  # ── More inbox operations ──────────────────────────────────────────────────────────────────────────────────
  # AT LEAST ONCE (with ack). Return up to `limit` queued envelopes in seq order without removing them.
  peek @14 (recipientKey :Data, channelId :Data, version :UInt16, auth :Auth, limit :UInt32) -> (payloads :List(Envelope));

  # Remove every queued envelope with seq <= seqUpTo: sent by a client once it has stored what peek or peekWait
  # returned. After a crash before the ack, the same envelopes come again: deduplicate by seq.
  ack @15 (recipientKey :Data, channelId :Data, version :UInt16, seqUpTo :UInt64, auth :Auth) -> ();

  # Read several peers' hybrid public keys at once, in the order asked; an empty entry where none is published.
  fetchHybridKeys @16 (identityKeys :List(Data), auth :Auth) -> (keys :List(Data));

  # Enqueue one payload to several recipients in one durable step; one seq per recipient, in the order given.
  # idempotencyKey (appended, optional): as for enqueue; a retry gets the first call's seqs.
  batchEnqueue @17 (recipientKeys :List(Data), payload :Data, channelId :Data, version :UInt16, auth :Auth, idempotencyKey :Data) -> (seqs :List(UInt64));

  # The 16-byte id of the 1:1 channel between the caller and `peerKey` (created on first use; the same pair
  # always gets the same id). Only the two members may use its inboxes.
  createChannel @18 (peerKey :Data, auth :Auth) -> (channelId :Data);

  # Username -> Ed25519 identity key; empty when the username is not registered.
  resolveUser @19 (username :Text, auth :Auth) -> (identityKey :Data);

  # Ed25519 identity key -> username; empty when the key belongs to no account.
  resolveIdentity @20 (identityKey :Data, auth :Auth) -> (username :Text);

  # ── Additions (append only) ────────────────────────────────────────────────────────────────────────────────
  # What this node is and what it accepts; needs no authentication.
  serverInfo @21 () -> (info :ServerInfo);

  # Revokes the session token given in `auth`; later calls with it fail with `unauthenticated:`.
  logout @22 (auth :Auth) -> ();

  # AT LEAST ONCE: the receive loop for clients that must not lose messages. Like fetchWait, but nothing is
  # removed: the client acks (`ack`) once it has stored what it got, so a crash between receiving and storing
  # loses nothing.
  peekWait @23 (recipientKey :Data, channelId :Data, version :UInt16, timeoutMs :UInt64, auth :Auth, limit :UInt32) -> (payloads :List(Envelope));

  # The node's health in detail (what `health` sums up as "ok" or "unhealthy: ...") and its counters; needs no
  # authentication and reveals no per-user data.
  nodeStatus @24 () -> (status :NodeStatus);

  # The group's sequencer: submit an MLS commit or proposal (`message`, a PublicMessage or PrivateMessage whose
  # group id, epoch and content type must match `groupId`, `epoch` and what the call is) together with what
  # travels with it. The node accepts exactly one commit per (groupId, epoch), atomically with enqueueing every
  # delivery (to members of the group before the commit) and every welcome (to members the commit adds).
  # `members` is the member set after a commit (identity keys, the committer included); ignored for proposals.
  # The same message again returns the first acceptance (`duplicate`, same seqs); another commit for a taken
  # epoch, or one below the group's, returns `stale` with the group's epoch. Only members may submit.
  submitCommit @25 (groupId :Data, epoch :UInt64, message :Data, deliveries :List(Delivery), welcomes :List(Delivery), members :List(Data), auth :Auth) -> (result :CommitResult);

  # Attachments: an encrypted file stored for `blobTtlSeconds` (limits: `maxBlobBytes` each, and a quota per
  # identity); its id is the SHA-256 of the bytes. Any logged-in client that knows the id may fetch it: the key
  # that decrypts it travels inside MLS messages, never to the node.
  putBlob @26 (data :Data, auth :Auth) -> (blobId :Data);
  getBlob @27 (blobId :Data, auth :Auth) -> (data :Data);

  # The caller's own coffer shard (secrets its operator provisioned with `qpc-server coffer load`): a CBOR map of
  # names to typed values, sealed in the hybrid envelope to the caller's published hybrid key with HPKE info
  # "quicnprotochat coffer v1" | identity key. No parameter names a key: only the session's own shard is served.
  fetchCoffer @28 (auth :Auth) -> (shard :Data);

  # Key login for bots (no password). authChallenge returns the key's next nonce; for a key the node has not
  # seen it first asks the owner's logged-in clients (botApprovalWait) and returns once one approves; a refusal,
  # or no answer within limits.botApprovalTimeoutSeconds, is `forbidden:`. `botName` is what the owner is shown.
  # authRespond takes an Ed25519 signature by the key over common/transcripts.py key_login_transcript (the node's
  # fingerprint, the key, the nonce); each nonce answers once. Its token is used as opaqueLoginFinish's.
  authChallenge @29 (identityKey :Data, owner :Text, botName :Text) -> (nonce :UInt64);
  authRespond @30 (identityKey :Data, nonce :UInt64, signature :Data) -> (sessionToken :Data);

  # The owner's side. botApprovalWait returns the caller's pending and recently decided approval requests as
  # soon as they differ from what `sinceDigest` names (the digest a previous call returned; empty at first), or
  # after timeoutMs (capped at maxWaitMs). The first botApprovalAnswer wins; every answer returns the state the
  # request ended in. revokeBot ends the key's sessions at once; a revoked key cannot log in again.
  botApprovalWait @31 (sinceDigest :Data, timeoutMs :UInt64, auth :Auth) -> (digest :Data, requests :List(BotApproval));
  botApprovalAnswer @32 (requestId :Data, approve :Bool, auth :Auth) -> (state :BotApproval.State);
  listBots @33 (auth :Auth) -> (bots :List(BotKey));
  revokeBot @34 (identityKey :Data, auth :Auth) -> ();
}

struct Auth {
  version @0 :UInt16;       # 1: bearer token
  accessToken @1 :Data;     # the session token issued by opaqueLoginFinish
  deviceId @2 :Data;        # optional device UUID, for auditing and per-device limits
}

# One queued message with the sequence number its inbox assigned. Clients process envelopes in seq order,
# which keeps MLS commits in the order the node received them.
struct Envelope {
  seq @0 :UInt64;
  data @1 :Data;            # opaque to the node: a sealed, MLS-encrypted message
}

struct ServerInfo {
  nodeVersion @0 :Text;           # the node software's version
  protocolVersion @1 :UInt16;     # the wire `version` the node accepts (1)
  certFingerprint @2 :Text;       # SHA-256 of the TLS certificate's SubjectPublicKeyInfo, lowercase hex
  allowSealedSender @3 :Bool;     # whether default-inbox enqueue is accepted without binding the sender
  limits @4 :Limits;
}

# The node's configured limits, so that clients can stay inside them instead of learning them from errors.
struct Limits {
  maxPayloadBytes @0 :UInt64;
  maxInboxDepth @1 :UInt64;       # queued messages per inbox
  maxInboxBytes @2 :UInt64;       # queued payload bytes per inbox
  messageTtlSeconds @3 :UInt64;   # queued messages older than this are dropped
  maxFetchLimit @4 :UInt32;       # what `limit = 0` means for fetch, fetchWait and peek
  maxWaitMs @5 :UInt64;           # the cap on fetchWait's timeoutMs
  maxKeyPackagesPerIdentity @6 :UInt32;
  maxEndpointBytes @7 :UInt32;
  maxFetchBytes @8 :UInt64;       # payload bytes one fetch, fetchWait, peek or peekWait returns at most
  maxCommitDeliveries @9 :UInt32; # deliveries plus welcomes of one submitCommit
  maxCommitBytes @10 :UInt64;     # message plus payload bytes of one submitCommit
  maxGroupMembers @11 :UInt32;    # identity keys in a group's member set
  # What one client may make the node hold (hostile clients): calls running at once on one connection (more
  # wait unread), and fetchWait/peekWait calls parked at once per connection and per identity (more are refused).
  maxCallsPerConnection @12 :UInt32;
  maxParkedPerConnection @13 :UInt32;
  maxParkedPerIdentity @14 :UInt32;
  maxBatchBytes @15 :UInt64;      # recipients x payload bytes one batchEnqueue may store
  maxInboxSharePerSender @16 :UInt32;  # messages one sender may have queued in someone else's default inbox
  maxBlobBytes @17 :UInt64;       # the largest putBlob
  blobTtlSeconds @18 :UInt64;     # how long a blob is kept
  botApprovalTimeoutSeconds @19 :Float64;    # an owner's time to answer a new bot key; then it is refused
  maxPendingBotApprovalsPerOwner @20 :UInt32;
  maxBotChallengesPerKey @21 :UInt32;        # unanswered authChallenge nonces of one key at once
  # Connections and what each may hold (hostile clients): answer bytes held unread, the largest message, bytes of
  # incoming messages in progress over the whole node, Bootstrap messages per connection, connection caps (in
  # all, per source address, not yet authenticated) and timeouts (handshake, idle TLS, idle QUIC).
  maxUnsentBytesPerConnection @22 :UInt64;
  maxMessageBytes @23 :UInt64;
  maxIncomingBytesInProgress @24 :UInt64;
  maxBootstrapsPerConnection @25 :UInt32;
  maxConnections @26 :UInt32;
  maxConnectionsPerAddress @27 :UInt32;
  maxUnauthenticatedConnections @28 :UInt32;
  handshakeTimeoutSeconds @29 :Float64;
  tcpIdleTimeoutSeconds @30 :Float64;
  quicIdleTimeoutSeconds @31 :Float64;
  # Token buckets the node keeps (past one a call gets `resource_exhausted:` with a retry-after).
  callsPerIdentity @32 :RateLimit;           # every authenticated call
  callsPerAddress @33 :RateLimit;            # every call, per source address
  failedLoginsPerUsername @34 :RateLimit;    # failed OPAQUE login finishes per (username, source address)
  loginsPerAddress @35 :RateLimit;           # OPAQUE login calls per source address
  sealedEnqueuesPerConnection @36 :RateLimit;
  registrationsPerAddress @37 :RateLimit;    # registration calls, start and finish each count
  registrationsTotal @38 :RateLimit;
  keyPackageFetchesPerPair @39 :RateLimit;   # per (caller, target identity)
  resolvesPerIdentity @40 :RateLimit;        # resolveUser
  resolvesPerAddress @41 :RateLimit;
  resolveEndpointsPerIdentity @42 :RateLimit;
  resolveEndpointsPerAddress @43 :RateLimit;
  newConnectionsPerAddress @44 :RateLimit;    # connections started (TLS and QUIC), per source address (IPv6: /64)
}

# A token bucket: `burst` at once, refilled at `perSecond`.
struct RateLimit {
  perSecond @0 :Float64;
  burst @1 :UInt32;
}

# What submitCommit enqueues to one recipient.
struct Delivery {
  recipientKey @0 :Data;
  channelId @1 :Data;       # empty: the recipient's default inbox
  payload @2 :Data;         # what lands in that inbox: the sealed envelope of the commit (or Welcome) frame
}

struct CommitResult {
  outcome @0 :Outcome;
  epoch @1 :UInt64;         # the group's epoch at the node after this call (accepted commit: epoch + 1)
  seqs @2 :List(UInt64);    # accepted or duplicate: one seq per delivery, then one per welcome, in call order
  enum Outcome {
    accepted @0;
    duplicate @1;
    stale @2;               # the epoch is taken or past: process your inbox, then try again at `epoch`
  }
}

# What nodeStatus reports: the store and disk as probed now, and counters since the node started.
struct NodeStatus {
  status @0 :Text;                # what `health` returns: "ok" or "unhealthy: " and what is wrong
  storeReachable @1 :Bool;        # the database answered a trivial query just now
  storeWriterAlive @2 :Bool;      # the group-commit writer runs (it is restarted if it ever stops)
  freeDiskBytes @3 :UInt64;       # free space where the node keeps its data
  minFreeDiskBytes @4 :UInt64;    # under this, new messages are refused (`resource_exhausted: disk full`)
  connections @5 :UInt32;         # open RPC connections (QUIC and TLS)
  parkedWaiters @6 :UInt32;       # fetchWait/peekWait calls waiting for a message
  writeQueueDepth @7 :UInt32;     # writes waiting for the store's writer, its batch in hand included
  storeFailedBatches @8 :UInt64;  # write transactions that failed as a whole since start
  storeWriterRestarts @9 :UInt32; # times the writer ended unexpectedly and was restarted
  quicConnections @10 :UInt32;    # QUIC connections held, with or without an RPC stream yet
  quicRetry @11 :Bool;            # whether new QUIC connections go through a Retry (--quic-retry)
  retriesSent @12 :UInt64;        # Retry packets sent since start
  retryTokensAccepted @13 :UInt64; # Initials that brought back a valid address-validation token
  retryTokensRefused @14 :UInt64; # Initials with a token that was forged, expired or made for another address
  processId @15 :UInt32;          # the node process serving this connection: one of the workers (--workers N)
}

# A bot key waiting for (or recently given) its owner's decision.
struct BotApproval {
  requestId @0 :Data;
  identityKey @1 :Data;       # the bot's Ed25519 key
  name @2 :Text;              # the name the bot asked for
  state @3 :State;
  expiresAt @4 :Float64;      # unix seconds: unanswered by then, it is refused
  enum State {
    pending @0;
    approved @1;
    refused @2;
    expired @3;
  }
}

# One of the caller's bot keys.
struct BotKey {
  identityKey @0 :Data;
  name @1 :Text;
  approvedAt @2 :Float64;     # unix seconds
  revoked @3 :Bool;
}
