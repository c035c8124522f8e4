//! An MLS client on mls-rs, driven by JSON lines on stdin (one request a line, one answer a
//! line on stdout), so that tests can check that quicnprotochat's groups interoperate with
//! another RFC 9420 implementation. Bytes travel as hex. State lives in memory only.
//!
//! Requests: `{"op": ..., ...}`; answers: the fields below, or `{"error": "reason"}`.
//! identity -> identity_key | key_package -> key_package (an MLSMessage) | create_group ->
//! group_id | join {welcome} -> group_id | add {group_id, key_packages} -> commit, welcome |
//! remove {group_id, identity_keys} -> commit | update {group_id} -> commit |
//! commit_proposals {group_id} -> commit | encrypt {group_id, plaintext} -> message |
//! process {message} -> kind, epoch, plaintext?, sender?, removed_self? |
//! epoch {group_id} -> epoch | members {group_id} -> members | export_secret {group_id, label,
//! context, length} -> secret.
//!
//! merge {group_id} / clear {group_id}: apply or drop the pending commit | sign {message} ->
//! signature (pure Ed25519 by the identity key: how the peer proves its identity to the node).
//!
//! bench {members, iterations, durable_dir?} -> figures: CPU microseconds per operation of mls-rs
//! in a group of that size, every member in this process; with durable_dir, the two measured
//! members store their state there after each operation (see `bench`; for bench/native_bench.py).
//!
//! Commits are applied at once unless the request says `"pending": true` (then the node decides:
//! merge on accepted, clear on stale).

use std::collections::HashMap;
use std::io::{BufRead, Write};

use mls_rs::client_builder::MlsConfig;
use mls_rs::crypto::SignatureSecretKey;
use mls_rs::group::{CommitEffect, ReceivedMessage};
use mls_rs::{
    CipherSuite, CipherSuiteProvider, Client, CryptoProvider, ExtensionList, Group, MlsMessage,
};
use mls_rs_crypto_rustcrypto::RustCryptoProvider;
use serde_json::{json, Map, Value};

mod bench;

type Answer = Result<Value, String>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err("odd hex length".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| format!("bad hex: {e}")))
        .collect()
}

fn field<'a>(req: &'a Map<String, Value>, name: &str) -> Result<&'a Value, String> {
    req.get(name).ok_or_else(|| format!("missing field {name}"))
}

fn bytes_field(req: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    unhex(
        field(req, name)?
            .as_str()
            .ok_or_else(|| format!("{name} is not a string"))?,
    )
}

fn list_field(req: &Map<String, Value>, name: &str) -> Result<Vec<Vec<u8>>, String> {
    field(req, name)?
        .as_array()
        .ok_or_else(|| format!("{name} is not a list"))?
        .iter()
        .map(|v| unhex(v.as_str().ok_or("list item is not a string")?))
        .collect()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

struct Peer<C: MlsConfig + Clone, P: CipherSuiteProvider> {
    client: Client<C>,
    suite: P,
    secret: SignatureSecretKey,
    identity_key: Vec<u8>,
    groups: HashMap<Vec<u8>, Group<C>>,
}

impl<C: MlsConfig + Clone, P: CipherSuiteProvider> Peer<C, P> {
    fn group(&mut self, req: &Map<String, Value>) -> Result<&mut Group<C>, String> {
        let id = bytes_field(req, "group_id")?;
        self.groups
            .get_mut(&id)
            .ok_or_else(|| "unknown group".to_string())
    }

    fn commit(
        req: &Map<String, Value>,
        group: &mut Group<C>,
        output: mls_rs::group::CommitOutput,
    ) -> Answer {
        if req.get("pending") != Some(&Value::Bool(true)) {
            group.apply_pending_commit().map_err(err)?;
        }
        let mut answer = json!({"commit": hex(&output.commit_message().to_bytes().map_err(err)?)});
        if let Some(welcome) = output.welcome_messages().first() {
            answer["welcome"] = json!(hex(&welcome.to_bytes().map_err(err)?));
        }
        Ok(answer)
    }

    fn handle(&mut self, req: &Map<String, Value>) -> Answer {
        let op = field(req, "op")?.as_str().ok_or("op is not a string")?;
        match op {
            "identity" => Ok(json!({"identity_key": hex(&self.identity_key)})),
            "key_package" => {
                let kp = self
                    .client
                    .generate_key_package_message(ExtensionList::new(), ExtensionList::new(), None)
                    .map_err(err)?;
                Ok(json!({"key_package": hex(&kp.to_bytes().map_err(err)?)}))
            }
            "create_group" => {
                let group = self
                    .client
                    .create_group(ExtensionList::new(), ExtensionList::new(), None)
                    .map_err(err)?;
                let id = group.group_id().to_vec();
                self.groups.insert(id.clone(), group);
                Ok(json!({"group_id": hex(&id)}))
            }
            "join" => {
                let welcome = MlsMessage::from_bytes(&bytes_field(req, "welcome")?).map_err(err)?;
                let (group, _) = self.client.join_group(None, &welcome, None).map_err(err)?;
                let id = group.group_id().to_vec();
                self.groups.insert(id.clone(), group);
                Ok(json!({"group_id": hex(&id)}))
            }
            "add" => {
                let kps = list_field(req, "key_packages")?;
                let group = self.group(req)?;
                let mut builder = group.commit_builder();
                for kp in kps {
                    builder = builder
                        .add_member(MlsMessage::from_bytes(&kp).map_err(err)?)
                        .map_err(err)?;
                }
                let output = builder.build().map_err(err)?;
                Self::commit(req, group, output)
            }
            "remove" => {
                let keys = list_field(req, "identity_keys")?;
                let group = self.group(req)?;
                let indices = keys
                    .iter()
                    .map(|k| {
                        group
                            .roster()
                            .members_iter()
                            .find(|m| m.signing_identity.signature_key.as_bytes() == k.as_slice())
                            .map(|m| m.index)
                            .ok_or_else(|| "not a member".to_string())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let mut builder = group.commit_builder();
                for index in indices {
                    builder = builder.remove_member(index).map_err(err)?;
                }
                let output = builder.build().map_err(err)?;
                Self::commit(req, group, output)
            }
            "update" | "commit_proposals" => {
                let group = self.group(req)?;
                let output = group.commit_builder().build().map_err(err)?;
                Self::commit(req, group, output)
            }
            "encrypt" => {
                let plaintext = bytes_field(req, "plaintext")?;
                let group = self.group(req)?;
                let msg = group
                    .encrypt_application_message(&plaintext, vec![])
                    .map_err(err)?;
                Ok(json!({"message": hex(&msg.to_bytes().map_err(err)?)}))
            }
            "process" => {
                let msg = MlsMessage::from_bytes(&bytes_field(req, "message")?).map_err(err)?;
                let id = msg.group_id().ok_or("not a group message")?.to_vec();
                let group = self.groups.get_mut(&id).ok_or("unknown group")?;
                let received = group.process_incoming_message(msg).map_err(err)?;
                let mut answer = json!({"epoch": group.current_epoch()});
                match received {
                    ReceivedMessage::ApplicationMessage(app) => {
                        answer["kind"] = json!("application");
                        answer["plaintext"] = json!(hex(app.data()));
                        let sender = group
                            .roster()
                            .member_with_index(app.sender_index)
                            .map_err(err)?;
                        answer["sender"] =
                            json!(hex(sender.signing_identity.signature_key.as_bytes()));
                    }
                    ReceivedMessage::Commit(commit) => {
                        answer["kind"] = json!("commit");
                        answer["removed_self"] =
                            json!(matches!(commit.effect, CommitEffect::Removed { .. }));
                    }
                    ReceivedMessage::Proposal(_) => answer["kind"] = json!("proposal"),
                    _ => return Err("not a group message".into()),
                }
                Ok(answer)
            }
            "merge" => {
                self.group(req)?.apply_pending_commit().map_err(err)?;
                Ok(json!({}))
            }
            "clear" => {
                self.group(req)?.clear_pending_commit();
                Ok(json!({}))
            }
            "sign" => {
                let message = bytes_field(req, "message")?;
                let signature = self
                    .suite
                    .sign(&self.secret, &message)
                    .map_err(|_| "signing failed".to_string())?;
                Ok(json!({"signature": hex(&signature)}))
            }
            "epoch" => Ok(json!({"epoch": self.group(req)?.current_epoch()})),
            "members" => {
                let members: Vec<String> = self
                    .group(req)?
                    .roster()
                    .members_iter()
                    .map(|m| hex(m.signing_identity.signature_key.as_bytes()))
                    .collect();
                Ok(json!({"members": members}))
            }
            "export_secret" => {
                let label = field(req, "label")?
                    .as_str()
                    .ok_or("label is not a string")?
                    .to_owned();
                let context = bytes_field(req, "context")?;
                let length = field(req, "length")?
                    .as_u64()
                    .ok_or("length is not a number")? as usize;
                let secret = self
                    .group(req)?
                    .export_secret(label.as_bytes(), &context, length)
                    .map_err(err)?;
                Ok(json!({"secret": hex(&secret)}))
            }
            "bench" => {
                let count = |name: &str| -> Result<usize, String> {
                    let n = field(req, name)?
                        .as_u64()
                        .ok_or(format!("{name} is not a number"))?;
                    usize::try_from(n).map_err(err)
                };
                let durable_dir = match req.get("durable_dir") {
                    None | Some(Value::Null) => None,
                    Some(dir) => Some(std::path::PathBuf::from(
                        dir.as_str().ok_or("durable_dir is not a string")?,
                    )),
                };
                bench::run(
                    count("members")?,
                    count("iterations")?,
                    durable_dir.as_deref(),
                )
            }
            other => Err(format!("unknown op {other}")),
        }
    }
}

/// Suite 0x0001, BasicCredential holding the raw 32-byte Ed25519 key (as quicnprotochat does).
const SUITE: CipherSuite = CipherSuite::CURVE25519_AES128;

fn suite_provider() -> impl CipherSuiteProvider {
    RustCryptoProvider::default()
        .cipher_suite_provider(SUITE)
        .expect("suite 0x0001 supported")
}

/// Finishes a `Client::builder()` (storage chosen or not) as every member here is set up: a new
/// Ed25519 identity in a BasicCredential, the ratchet tree in Welcomes; gives (client, signing
/// key, identity key). A macro: the builder's type changes with each storage chosen.
macro_rules! with_identity {
    ($builder:expr) => {{
        use ::mls_rs::CipherSuiteProvider as _;
        let (secret, public) = $crate::suite_provider()
            .signature_key_generate()
            .expect("key generation");
        let identity_key = public.as_bytes().to_vec();
        let credential =
            ::mls_rs::identity::basic::BasicCredential::new(identity_key.clone()).into_credential();
        let rules = ::mls_rs::mls_rules::DefaultMlsRules::new().with_commit_options(
            ::mls_rs::mls_rules::CommitOptions::new().with_ratchet_tree_extension(true),
        );
        let client = $builder
            .crypto_provider(::mls_rs_crypto_rustcrypto::RustCryptoProvider::default())
            .identity_provider(::mls_rs::identity::basic::BasicIdentityProvider::new())
            .mls_rules(rules)
            .signing_identity(
                ::mls_rs::identity::SigningIdentity::new(credential, public),
                secret.clone(),
                $crate::SUITE,
            )
            .build();
        (client, secret, identity_key)
    }};
}
pub(crate) use with_identity;

/// A client with a new Ed25519 identity: the client, its secret key and its public key.
fn new_client() -> (Client<impl MlsConfig>, SignatureSecretKey, Vec<u8>) {
    with_identity!(Client::builder())
}

fn main() {
    let (client, secret, identity_key) = new_client();
    let suite_provider = suite_provider();
    let mut peer = Peer {
        client,
        suite: suite_provider,
        secret,
        identity_key,
        groups: HashMap::new(),
    };
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let answer = match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(req)) => peer.handle(&req),
            _ => Err("request is not a JSON object".into()),
        };
        let out = answer.unwrap_or_else(|e| json!({"error": e}));
        if writeln!(stdout, "{out}")
            .and_then(|_| stdout.flush())
            .is_err()
        {
            break;
        }
    }
}
