# Parameter structs laid out like NodeService's, for a hand-written client (rawrpc.py) that sends what a hostile
# one would: every struct here shares the pointer and data layout of the method's real parameters, with Text
# replaced by Data (so its bytes need not be UTF-8 or NUL-terminated) or a pointer of the wrong kind.
@0xd5c0a4e3b9f21c77;

struct Auth {
  version @0 :UInt16;
  accessToken @1 :Data;
  deviceId @2 :Data;
}

struct Inner {
  value @0 :UInt64;
}

# opaqueLoginStart / opaqueRegisterStart (username :Text, request :Data)
struct UsernameRequest {
  username @0 :Data;
  request @1 :Data;
}

struct UsernameRequestWrongKind {
  username @0 :Inner;
  request @1 :Data;
}

# opaqueLoginFinish / opaqueRegisterFinish (username :Text, finalization/upload :Data, identityKey :Data,
# identitySig :Data)
struct UsernameFinish {
  username @0 :Data;
  message @1 :Data;
  identityKey @2 :Data;
  identitySig @3 :Data;
}

# resolveUser (username :Text, auth :Auth)
struct ResolveUser {
  username @0 :Data;
  auth @1 :Auth;
}

struct ResolveUserWrongKind {
  username @0 :List(Data);
  auth @1 :Auth;
}

# peek / fetch (recipientKey :Data, channelId :Data, version :UInt16, auth :Auth, limit :UInt32)
struct ReadInbox {
  recipientKey @0 :Data;
  channelId @1 :Data;
  version @2 :UInt16;
  auth @3 :Auth;
  limit @4 :UInt32;
}

struct ReadInboxWrongKind {
  recipientKey @0 :Inner;
  channelId @1 :Data;
  version @2 :UInt16;
  auth @3 :Auth;
  limit @4 :UInt32;
}

# fetchHybridKeys (identityKeys :List(Data), auth :Auth)
struct IdentityKeys {
  identityKeys @0 :List(Data);
  auth @1 :Auth;
}

struct Empty {}

# peek with `auth` as a list where a struct is expected
struct ReadInboxAuthAsList {
  recipientKey @0 :Data;
  channelId @1 :Data;
  version @2 :UInt16;
  auth @3 :List(UInt64);
  limit @4 :UInt32;
}
