//! MLS round trips through the encrypted vault.

use super::*;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    fn path(&self, name: &str) -> String {
        self.0.path().join(name).to_str().unwrap().to_owned()
    }
}

const KEY_A: [u8; 32] = [1; 32];
const KEY_B: [u8; 32] = [2; 32];
const KEY_C: [u8; 32] = [3; 32];

fn three_member_group(dir: &Dir, suite: u16) -> (Vault, Vault, Vault, Vec<u8>) {
    let mut a = Vault::open(&dir.path("a.db"), &KEY_A).unwrap();
    let mut b = Vault::open(&dir.path("b.db"), &KEY_B).unwrap();
    let mut c = Vault::open(&dir.path("c.db"), &KEY_C).unwrap();
    let gid = a.create_group(suite).unwrap();
    let kp_b = b.create_key_package(false, suite).unwrap();
    let kp_c = c.create_key_package(true, suite).unwrap();
    let info = validate_key_package(&kp_c).unwrap();
    assert!(info.last_resort);
    assert_eq!(info.identity_key, c.identity_key());
    assert_eq!(info.ciphersuite, suite);
    let out = a.add_members(&gid, &[kp_b, kp_c]).unwrap();
    a.merge_pending_commit(&gid).unwrap();
    assert_eq!(b.join_group(out.welcome.as_ref().unwrap()).unwrap(), gid);
    assert_eq!(c.join_group(out.welcome.as_ref().unwrap()).unwrap(), gid);
    assert_eq!(a.epoch(&gid).unwrap(), 1);
    assert_eq!(b.epoch(&gid).unwrap(), 1);
    assert_eq!(a.members(&gid).unwrap().len(), 3);
    (a, b, c, gid)
}

fn group_flow(suite: u16) {
    let dir = Dir::new();
    let (mut a, mut b, mut c, gid) = three_member_group(&dir, suite);
    for (sender, name) in [(0usize, "a"), (1, "b"), (2, "c")] {
        let mut vs = [&mut a, &mut b, &mut c];
        let text = format!("hello from {name}");
        let ct = vs[sender].encrypt(&gid, text.as_bytes()).unwrap();
        let sender_key = vs[sender].identity_key();
        for (i, v) in vs.iter_mut().enumerate() {
            if i == sender {
                continue;
            }
            let p = v.process(&ct).unwrap();
            assert_eq!(p.kind, MessageKind::Application);
            assert_eq!(p.plaintext.as_ref().unwrap().as_slice(), text.as_bytes());
            assert_eq!(p.sender.as_ref().unwrap(), &sender_key);
        }
    }
    // Tampered message rejected, state unchanged afterwards.
    let ct = a.encrypt(&gid, b"secret").unwrap();
    let mut bad = ct.clone();
    let n = bad.len();
    bad[n - 3] ^= 1;
    assert!(b.process(&bad).is_err());
    assert_eq!(
        b.process(&ct).unwrap().plaintext.unwrap().as_slice(),
        b"secret"
    );

    // Remove c.
    let commit = a.remove_members(&gid, &[c.identity_key()]).unwrap();
    a.merge_pending_commit(&gid).unwrap();
    let p = b.process(&commit).unwrap();
    assert_eq!(p.kind, MessageKind::Commit);
    assert_eq!(p.removed, vec![c.identity_key()]);
    assert_eq!(p.epoch, 2);
    assert!(!p.self_removed);
    let pc = c.process(&commit).unwrap();
    assert!(pc.self_removed);
    assert!(!c.is_active(&gid).unwrap());
    let ct = a.encrypt(&gid, b"after removal").unwrap();
    assert!(c.process(&ct).is_err());
    assert_eq!(
        b.process(&ct).unwrap().plaintext.unwrap().as_slice(),
        b"after removal"
    );

    // Reload from disk.
    drop(a);
    drop(b);
    let mut a = Vault::open(&dir.path("a.db"), &KEY_A).unwrap();
    let mut b = Vault::open(&dir.path("b.db"), &KEY_B).unwrap();
    assert_eq!(a.group_ids().unwrap(), vec![gid.clone()]);
    assert_eq!(a.epoch(&gid).unwrap(), 2);
    let ct = b.encrypt(&gid, b"after restart").unwrap();
    assert_eq!(
        a.process(&ct).unwrap().plaintext.unwrap().as_slice(),
        b"after restart"
    );
    let upd = a.self_update(&gid).unwrap();
    a.merge_pending_commit(&gid).unwrap();
    assert_eq!(b.process(&upd).unwrap().epoch, 3);
    // Replaying an old-epoch commit the journal has forgotten is a WrongEpoch error.
    b.forget_processed(&[p.digest.to_vec()]).unwrap();
    assert!(matches!(b.process(&commit), Err(Error::WrongEpoch(_))));
}

#[test]
fn default_suite_group() {
    group_flow(SUITE_DEFAULT);
}

#[test]
fn xwing_suite_group() {
    group_flow(SUITE_XWING);
}

#[test]
fn wrong_key_and_no_plaintext_on_disk() {
    let dir = Dir::new();
    let (mut a, mut b, _c, gid) = three_member_group(&dir, SUITE_DEFAULT);
    let marker = b"PLAINTEXT-MARKER-4f1c2e9a";
    let ct = a.encrypt(&gid, marker).unwrap();
    b.process(&ct).unwrap();
    drop(a);
    drop(b);
    for f in std::fs::read_dir(dir.0.path()).unwrap() {
        let data = std::fs::read(f.unwrap().path()).unwrap();
        assert!(!data.windows(marker.len()).any(|w| w == marker));
        assert!(!data.windows(16).any(|w| w == b"SQLite format 3\0"));
    }
    assert!(matches!(
        Vault::open(&dir.path("a.db"), &KEY_B),
        Err(Error::VaultKey(_))
    ));
    assert!(matches!(
        Vault::open(&dir.path("a.db"), &[1u8; 31]),
        Err(Error::InvalidKey(_))
    ));
    assert!(Vault::open(&dir.path("a.db"), &KEY_A).is_ok());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path("a.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "vault file readable by others: {mode:o}");
    }
}

#[test]
fn key_package_validation_and_signatures() {
    let dir = Dir::new();
    let mut a = Vault::open(&dir.path("a.db"), &KEY_A).unwrap();
    let kp = a.create_key_package(false, SUITE_DEFAULT).unwrap();
    let info = validate_key_package(&kp).unwrap();
    assert!(!info.last_resort);
    assert!(info.not_after > info.not_before);
    let mut bad = kp.clone();
    let n = bad.len();
    bad[n - 10] ^= 1;
    assert!(matches!(
        validate_key_package(&bad),
        Err(Error::InvalidKeyPackage(_))
    ));
    assert!(validate_key_package(&kp[..kp.len() - 1]).is_err());
    assert!(validate_key_package(b"").is_err());

    let sig = a.sign(b"transcript").unwrap();
    assert!(verify_ed25519(&a.identity_key(), b"transcript", &sig));
    assert!(!verify_ed25519(&a.identity_key(), b"transcripT", &sig));
    assert!(!verify_ed25519(
        &a.identity_key()[..31],
        b"transcript",
        &sig
    ));
    assert!(matches!(a.create_group(0x0002), Err(Error::Unsupported(_))));
    assert!(matches!(a.epoch(b"nope"), Err(Error::GroupNotFound(_))));
}

#[test]
fn expired_and_foreign_credential_key_packages_rejected() {
    let dir = Dir::new();
    let a = Vault::open(&dir.path("a.db"), &KEY_A).unwrap();
    let cs = ciphersuite(SUITE_DEFAULT).unwrap();
    // Lifetime entirely in the past (1970).
    let expired = KeyPackage::builder()
        .key_package_lifetime(Lifetime::init(0, 1000))
        .leaf_node_capabilities(Vault::capabilities())
        .build(cs, &a.provider, &a.signer, a.credential())
        .unwrap();
    let bytes = expired.key_package().tls_serialize_detached().unwrap();
    let err = validate_key_package(&bytes).unwrap_err();
    assert!(matches!(err, Error::InvalidKeyPackage(_)), "{err}");
    assert!(err.to_string().to_lowercase().contains("lifetime"), "{err}");

    // A basic credential naming another key than the signature key.
    let foreign = CredentialWithKey {
        credential: BasicCredential::new(vec![7u8; 32]).into(),
        signature_key: a.signer.public().into(),
    };
    let kp = KeyPackage::builder()
        .leaf_node_capabilities(Vault::capabilities())
        .build(cs, &a.provider, &a.signer, foreign)
        .unwrap();
    let bytes = kp.key_package().tls_serialize_detached().unwrap();
    let err = validate_key_package(&bytes).unwrap_err();
    assert!(err.to_string().contains("credential identity"), "{err}");
}

#[test]
fn message_info_reads_clear_headers() {
    let dir = Dir::new();
    let (mut a, mut b, _c, gid) = three_member_group(&dir, SUITE_DEFAULT);
    let app = a.encrypt(&gid, b"hi").unwrap();
    assert_eq!(
        message_info(&app).unwrap(),
        MessageInfo {
            group_id: gid.clone(),
            epoch: 1,
            content_type: "application",
            wire_format: "private",
        }
    );
    let proposal = a.leave_group(&gid).unwrap();
    let info = message_info(&proposal).unwrap();
    assert_eq!((info.epoch, info.content_type), (1, "proposal"));
    let commit = b.self_update(&gid).unwrap();
    let info = message_info(&commit).unwrap();
    assert_eq!(
        (info.epoch, info.content_type, info.wire_format),
        (1, "commit", "private")
    );

    // A PublicMessage commit, as other MLS libraries send them.
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(ciphersuite(SUITE_DEFAULT).unwrap())
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build();
    let mut plain = MlsGroup::new(&a.provider, &a.signer, &config, a.credential()).unwrap();
    let bundle = plain
        .self_update(&a.provider, &a.signer, LeafNodeParameters::default())
        .unwrap();
    let public = ser(bundle.commit()).unwrap();
    let info = message_info(&public).unwrap();
    assert_eq!(info.group_id, plain.group_id().as_slice());
    assert_eq!(
        (info.epoch, info.content_type, info.wire_format),
        (0, "commit", "public")
    );

    let kp = c_key_package(&dir);
    let other = a.create_group(SUITE_DEFAULT).unwrap();
    let welcome = a
        .add_members(&other, std::slice::from_ref(&kp))
        .unwrap()
        .welcome
        .unwrap();
    let wrapped_kp = [&[0u8, 1, 0, 5][..], &kp].concat();
    for (bad, reason) in [
        (&welcome[..], "carries a welcome"),
        (&wrapped_kp[..], "carries a key package"),
        (&kp[..], "does not parse"),
        (&app[..app.len() - 1], "does not parse"),
        (&[app.as_slice(), &[0]].concat()[..], "does not parse"),
        (b"".as_slice(), "does not parse"),
    ] {
        let err = message_info(bad).unwrap_err();
        assert!(matches!(err, Error::Malformed(_)), "{err}");
        assert!(err.to_string().contains(reason), "{err}");
    }
}

fn c_key_package(dir: &Dir) -> Vec<u8> {
    let mut c = Vault::open(&dir.path("kp.db"), &[9; 32]).unwrap();
    c.create_key_package(false, SUITE_DEFAULT).unwrap()
}

#[test]
fn wrapped_key_packages_accepted() {
    let dir = Dir::new();
    let mut a = Vault::open(&dir.path("a.db"), &KEY_A).unwrap();
    let mut b = Vault::open(&dir.path("b.db"), &KEY_B).unwrap();
    let cs = ciphersuite(SUITE_DEFAULT).unwrap();
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(Vault::capabilities())
        .build(cs, &b.provider, &b.signer, b.credential())
        .unwrap();
    let raw = bundle.key_package().tls_serialize_detached().unwrap();
    let wrapped = MlsMessageOut::from(bundle.key_package().clone())
        .tls_serialize_detached()
        .unwrap();
    assert_eq!(wrapped, [&[0u8, 1, 0, 5][..], &raw].concat());
    let (i_raw, i_wrapped) = (
        validate_key_package(&raw).unwrap(),
        validate_key_package(&wrapped).unwrap(),
    );
    assert_eq!(i_raw.reference, i_wrapped.reference);
    assert_eq!(i_wrapped.identity_key, b.identity_key());
    let mut tampered = wrapped.clone();
    let n = tampered.len();
    tampered[n - 5] ^= 1;
    assert!(matches!(
        validate_key_package(&tampered),
        Err(Error::InvalidKeyPackage(_))
    ));
    assert!(validate_key_package(&wrapped[..n - 1]).is_err());

    let gid = a.create_group(SUITE_DEFAULT).unwrap();
    let out = a.add_members(&gid, &[wrapped]).unwrap();
    assert_eq!(b.join_group(&out.welcome.unwrap()).unwrap(), gid);
}

#[test]
fn exporter_secrets_agree_and_follow_the_epoch() {
    let dir = Dir::new();
    let (mut a, mut b, c, gid) = three_member_group(&dir, SUITE_XWING);
    let sa = a.export_secret(&gid, "qpc test", b"ctx", 32).unwrap();
    assert_eq!(sa.len(), 32);
    assert_eq!(sa, b.export_secret(&gid, "qpc test", b"ctx", 32).unwrap());
    assert_eq!(sa, c.export_secret(&gid, "qpc test", b"ctx", 32).unwrap());
    assert_ne!(sa, a.export_secret(&gid, "qpc other", b"ctx", 32).unwrap());
    assert_ne!(sa, a.export_secret(&gid, "qpc test", b"ctY", 32).unwrap());
    for bad in [0, 255 * 32 + 1] {
        let err = a.export_secret(&gid, "qpc test", b"", bad).unwrap_err();
        assert!(matches!(err, Error::State(_)), "{err}");
    }
    let commit = a.self_update(&gid).unwrap();
    a.merge_pending_commit(&gid).unwrap();
    b.process(&commit).unwrap();
    let next = a.export_secret(&gid, "qpc test", b"ctx", 32).unwrap();
    assert_ne!(sa, next);
    assert_eq!(next, b.export_secret(&gid, "qpc test", b"ctx", 32).unwrap());
}

fn text(v: &mut Vault, ct: &[u8]) -> Vec<u8> {
    v.process(ct).unwrap().plaintext.unwrap().to_vec()
}

#[test]
fn commits_stay_pending_until_merged_or_cleared() {
    let dir = Dir::new();
    let (mut a, mut b, mut c, gid) = three_member_group(&dir, SUITE_DEFAULT);
    let commit = a.self_update(&gid).unwrap();
    let pending = a.pending_commit(&gid).unwrap().unwrap();
    assert_eq!(
        (pending.commit.as_slice(), pending.welcome),
        (commit.as_slice(), None)
    );
    assert_eq!(a.epoch(&gid).unwrap(), 1);
    for err in [
        a.encrypt(&gid, b"x").unwrap_err(),
        a.self_update(&gid).unwrap_err(),
        a.remove_members(&gid, &[b.identity_key()]).unwrap_err(),
        a.leave_group(&gid).unwrap_err(),
    ] {
        assert!(err.to_string().contains("a commit is pending"), "{err}");
    }
    // Durable: a restarted client finds the same bytes.
    drop(a);
    let mut a = Vault::open(&dir.path("a.db"), &KEY_A).unwrap();
    assert_eq!(a.pending_commit(&gid).unwrap().unwrap().commit, commit);
    assert_eq!(b.process(&commit).unwrap().epoch, 2);
    a.merge_pending_commit(&gid).unwrap();
    assert!(a.pending_commit(&gid).unwrap().is_none());
    assert!(matches!(a.merge_pending_commit(&gid), Err(Error::State(_))));
    assert_eq!(a.epoch(&gid).unwrap(), 2);
    let ct = a.encrypt(&gid, b"epoch 2").unwrap();
    assert_eq!(text(&mut b, &ct), b"epoch 2");

    // Two commits for epoch 2: the node takes b's; a clears its own and processes b's.
    // c is still at epoch 1 and catches up first.
    c.process(&commit).unwrap();
    let mine = a.self_update(&gid).unwrap();
    let theirs = b.self_update(&gid).unwrap();
    assert_eq!(message_info(&mine).unwrap().epoch, 2);
    b.merge_pending_commit(&gid).unwrap();
    a.clear_pending_commit(&gid).unwrap();
    a.clear_pending_commit(&gid).unwrap();
    assert!(a.pending_commit(&gid).unwrap().is_none());
    assert_eq!(a.process(&theirs).unwrap().epoch, 3);
    assert_eq!(c.process(&theirs).unwrap().epoch, 3);
    // The loser did not clear first: processing the winner drops its pending commit too.
    let mine = c.self_update(&gid).unwrap();
    let theirs = a.self_update(&gid).unwrap();
    a.merge_pending_commit(&gid).unwrap();
    assert_eq!(c.process(&theirs).unwrap().epoch, 4);
    assert!(c.pending_commit(&gid).unwrap().is_none());
    b.process(&theirs).unwrap();
    assert!(matches!(b.process(&mine), Err(Error::WrongEpoch(_))));
    let secrets: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|v| v.export_secret(&gid, "agree", b"", 32).unwrap())
        .collect();
    assert!(secrets.iter().all(|s| *s == secrets[0]));
    let ct = c.encrypt(&gid, b"epoch 4").unwrap();
    assert_eq!(text(&mut a, &ct), b"epoch 4");
    assert_eq!(text(&mut b, &ct), b"epoch 4");

    // add_members keeps its Welcome with the pending commit.
    let d_kp = c_key_package(&dir);
    let out = a.add_members(&gid, std::slice::from_ref(&d_kp)).unwrap();
    let pending = a.pending_commit(&gid).unwrap().unwrap();
    assert_eq!(pending.commit, out.commit);
    assert_eq!(pending.welcome, out.welcome);
}

#[test]
fn process_is_idempotent_through_the_journal() {
    let dir = Dir::new();
    let (mut a, mut b, c, gid) = three_member_group(&dir, SUITE_DEFAULT);
    let ct = a.encrypt(&gid, b"once").unwrap();
    let first = b.process(&ct).unwrap();
    // A crash after processing: the vault is reopened and the same bytes come again.
    drop(b);
    let mut b = Vault::open(&dir.path("b.db"), &KEY_B).unwrap();
    let again = b.process(&ct).unwrap();
    assert_eq!(again.digest, first.digest);
    assert_eq!(again.plaintext.unwrap().as_slice(), b"once");
    assert_eq!(again.sender, first.sender);
    assert_eq!(again.kind, MessageKind::Application);

    let commit = a.remove_members(&gid, &[c.identity_key()]).unwrap();
    a.merge_pending_commit(&gid).unwrap();
    let first = b.process(&commit).unwrap();
    let again = b.process(&commit).unwrap();
    assert_eq!(
        (
            again.kind,
            again.epoch,
            &again.removed,
            again.sender.as_ref()
        ),
        (
            MessageKind::Commit,
            2,
            &first.removed,
            first.sender.as_ref()
        )
    );
    assert_eq!(b.epoch(&gid).unwrap(), 2);

    b.forget_processed(&[first.digest.to_vec(), [7u8; 32].to_vec()])
        .unwrap();
    assert!(matches!(b.process(&commit), Err(Error::WrongEpoch(_))));
    b.forget_processed(&[crate::mls::journal::digest(&ct).to_vec()])
        .unwrap();
    assert!(b.process(&ct).is_err());
}

#[test]
fn leave_is_committed_by_another_member_and_rejoin_discards_old_state() {
    let dir = Dir::new();
    let (mut a, mut b, mut c, gid) = three_member_group(&dir, SUITE_XWING);
    let proposal = c.leave_group(&gid).unwrap();
    for v in [&mut a, &mut b] {
        let p = v.process(&proposal).unwrap();
        assert_eq!(p.kind, MessageKind::Proposal);
        assert_eq!(p.removed, vec![c.identity_key()]);
        assert_eq!(p.epoch, 1);
    }
    let out = a.commit_pending_proposals(&gid).unwrap();
    assert!(out.welcome.is_none());
    a.merge_pending_commit(&gid).unwrap();
    let seen = b.process(&out.commit).unwrap();
    assert_eq!(seen.removed, vec![c.identity_key()]);
    assert!(c.process(&out.commit).unwrap().self_removed);
    assert_eq!(a.members(&gid).unwrap().len(), 2);

    // Invited again: the old state of that group id is discarded.
    let kp = c.create_key_package(false, SUITE_XWING).unwrap();
    let out = a.add_members(&gid, &[kp]).unwrap();
    a.merge_pending_commit(&gid).unwrap();
    b.process(&out.commit).unwrap();
    let welcome = out.welcome.unwrap();
    assert_eq!(c.join_group(&welcome).unwrap(), gid);
    assert_eq!(c.join_group(&welcome).unwrap(), gid);
    assert!(c.is_active(&gid).unwrap());
    assert_eq!(c.epoch(&gid).unwrap(), 3);
    assert_eq!(c.group_ids().unwrap(), vec![gid.clone()]);
    let ct = b.encrypt(&gid, b"welcome back").unwrap();
    assert_eq!(text(&mut c, &ct), b"welcome back");
    c.forget_processed(&[crate::mls::journal::digest(&welcome).to_vec()])
        .unwrap();
    assert!(c.join_group(&welcome).is_err());
}

#[test]
fn public_message_handshakes_accepted() {
    let dir = Dir::new();
    let (mut a, mut b, _c, gid) = three_member_group(&dir, SUITE_DEFAULT);
    // a sends its handshakes in the clear, as other MLS libraries do.
    let mut group = a.load_group(&gid).unwrap();
    let plain_out = MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build();
    group
        .set_configuration(a.provider.storage(), &plain_out)
        .unwrap();
    // b's group as stored before mixed incoming handshakes were accepted.
    let mut b_group = b.load_group(&gid).unwrap();
    let old = MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .build();
    b_group
        .set_configuration(b.provider.storage(), &old)
        .unwrap();

    let commit = a.self_update(&gid).unwrap();
    let info = message_info(&commit).unwrap();
    assert_eq!((info.content_type, info.wire_format), ("commit", "public"));
    a.merge_pending_commit(&gid).unwrap();
    let p = b.process(&commit).unwrap();
    assert_eq!((p.kind, p.epoch), (MessageKind::Commit, 2));
    // b's own handshakes stay PrivateMessages.
    let own = b.self_update(&gid).unwrap();
    assert_eq!(message_info(&own).unwrap().wire_format, "private");
    b.clear_pending_commit(&gid).unwrap();
    let proposal = a.leave_group(&gid).unwrap();
    assert_eq!(message_info(&proposal).unwrap().wire_format, "public");
    let p = b.process(&proposal).unwrap();
    assert_eq!(
        (p.kind, p.removed),
        (MessageKind::Proposal, vec![a.identity_key()])
    );
}

#[test]
fn journal_entries_nobody_forgot_expire() {
    let dir = Dir::new();
    let (mut a, mut b, _c, gid) = three_member_group(&dir, SUITE_DEFAULT);
    let old = a.encrypt(&gid, b"old").unwrap();
    let old_digest = b.process(&old).unwrap().digest;
    // Make that entry older than the journal keeps entries.
    b.conn
        .execute(
            "UPDATE qpc_journal SET created_at = created_at - ?1 - 1 WHERE digest = ?2",
            rusqlite::params![journal::MAX_AGE_SECS, old_digest.as_slice()],
        )
        .unwrap();
    let new = a.encrypt(&gid, b"new").unwrap();
    let new_digest = b.process(&new).unwrap().digest;
    assert!(journal::processed(&b.conn, &old_digest).unwrap().is_none());
    assert!(journal::processed(&b.conn, &new_digest).unwrap().is_some());
    assert!(b.process(&old).is_err());
}

#[test]
fn past_epochs_member_lists_are_stored_once_and_dropped_with_their_epoch() {
    let dir = Dir::new();
    let (mut a, mut b, mut c, gid) = three_member_group(&dir, SUITE_DEFAULT);
    let rows = |v: &Vault, sql: &str| -> i64 { v.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let members_rows = "SELECT count(*) FROM qpc_epoch_members";
    let late = a.encrypt(&gid, b"from epoch 1").unwrap();
    for _ in 0..MAX_PAST_EPOCHS + 2 {
        let commit = a.self_update(&gid).unwrap();
        a.merge_pending_commit(&gid).unwrap();
        b.process(&commit).unwrap();
        c.process(&commit).unwrap();
    }
    // One member list per kept past epoch; older ones went with their epoch.
    assert_eq!(rows(&b, members_rows), MAX_PAST_EPOCHS as i64);
    // The secrets rewritten for each message hold no member list (no member's key).
    let blob = |sql: &str| -> Vec<u8> { b.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let body = blob("SELECT body FROM qpc_message_secrets");
    let list = blob("SELECT members FROM qpc_epoch_members LIMIT 1");
    let key = a.identity_key();
    let holds_key = |bytes: &[u8]| bytes.windows(key.len()).any(|w| w == key.as_slice());
    assert!(holds_key(&list) && !holds_key(&body));
    // Nothing left in OpenMLS's own table for the message secrets.
    let openmls_rows =
        "SELECT count(*) FROM openmls_group_data WHERE data_type = 'message_secrets'";
    assert_eq!(rows(&b, openmls_rows), 0);
    assert!(b.process(&late).is_err());
    let msg = a.encrypt(&gid, b"now").unwrap();
    drop(b);
    let mut b = Vault::open(&dir.path("b.db"), &KEY_B).unwrap();
    assert_eq!(text(&mut b, &msg), b"now");
    b.delete_group(&gid).unwrap();
    assert_eq!(rows(&b, members_rows), 0);
    assert_eq!(rows(&b, "SELECT count(*) FROM qpc_message_secrets"), 0);
}

fn key_package_of(dir: &Dir, name: &str, key: u8) -> Vec<u8> {
    let mut v = Vault::open(&dir.path(name), &[key; 32]).unwrap();
    v.create_key_package(false, SUITE_DEFAULT).unwrap()
}

fn own_leaf_key(v: &Vault, gid: &[u8]) -> Vec<u8> {
    v.group(gid)
        .unwrap()
        .own_leaf_node()
        .unwrap()
        .encryption_key()
        .tls_serialize_detached()
        .unwrap()
}

#[test]
fn groups_in_memory_stay_within_the_limit_and_evicted_ones_carry_on() {
    let dir = Dir::new();
    assert!(matches!(
        Vault::open_with_limit(&dir.path("zero.db"), &KEY_A, 0),
        Err(Error::State(_))
    ));
    let mut a = Vault::open_with_limit(&dir.path("a.db"), &KEY_A, 2).unwrap();
    let mut b = Vault::open_with_limit(&dir.path("b.db"), &KEY_B, 2).unwrap();
    let mut gids = vec![];
    for _ in 0..5 {
        let gid = a.create_group(SUITE_DEFAULT).unwrap();
        let kp = b.create_key_package(false, SUITE_DEFAULT).unwrap();
        let out = a.add_members(&gid, &[kp]).unwrap();
        a.merge_pending_commit(&gid).unwrap();
        b.join_group(out.welcome.as_ref().unwrap()).unwrap();
        gids.push(gid);
        assert!(a.groups_in_memory() <= 2 && b.groups_in_memory() <= 2);
    }
    // Every group again, the first ones long evicted: their state (ratchets, epochs) is intact.
    for round in 0..2 {
        for gid in &gids {
            let commit = a.self_update(gid).unwrap();
            a.merge_pending_commit(gid).unwrap();
            b.process(&commit).unwrap();
            let ct = a.encrypt(gid, format!("round {round}").as_bytes()).unwrap();
            assert_eq!(text(&mut b, &ct), format!("round {round}").as_bytes());
            assert_eq!(a.epoch(gid).unwrap(), 2 + round);
            assert_eq!(b.epoch(gid).unwrap(), 2 + round);
            assert!(a.groups_in_memory() <= 2 && b.groups_in_memory() <= 2);
        }
    }
    // The most recently used ones are kept; an older one comes back from the file.
    assert_eq!(a.groups_in_memory(), 2);
    a.epoch(&gids[0]).unwrap();
    assert_eq!(a.groups_in_memory(), 2);
}

#[test]
fn adding_a_member_renews_no_path_unless_a_proposal_needs_one() {
    let dir = Dir::new();
    let (mut a, mut b, mut c, gid) = three_member_group(&dir, SUITE_DEFAULT);
    let before = own_leaf_key(&a, &gid);
    let out = a
        .add_members(&gid, &[key_package_of(&dir, "d.db", 4)])
        .unwrap();
    a.merge_pending_commit(&gid).unwrap();
    assert_eq!(
        own_leaf_key(&a, &gid),
        before,
        "an add-only commit renewed the path"
    );
    for v in [&mut b, &mut c] {
        let p = v.process(&out.commit).unwrap();
        assert_eq!(
            (p.kind, p.added.len(), p.epoch),
            (MessageKind::Commit, 1, 2)
        );
    }
    let secrets: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|v| v.export_secret(&gid, "agree", b"", 32).unwrap())
        .collect();
    assert!(secrets.iter().all(|s| *s == secrets[0]));

    // c asks to leave: a's next add commits that Remove too, which needs a path (RFC 9420 12.4).
    let leave = c.leave_group(&gid).unwrap();
    a.process(&leave).unwrap();
    b.process(&leave).unwrap();
    let out = a
        .add_members(&gid, &[key_package_of(&dir, "e.db", 5)])
        .unwrap();
    a.merge_pending_commit(&gid).unwrap();
    assert_ne!(
        own_leaf_key(&a, &gid),
        before,
        "a commit with a Remove must renew the path"
    );
    let p = b.process(&out.commit).unwrap();
    assert_eq!(
        (p.added.len(), p.removed, p.epoch),
        (1, vec![c.identity_key()], 3)
    );
    assert_eq!(
        a.export_secret(&gid, "agree", b"", 32).unwrap(),
        b.export_secret(&gid, "agree", b"", 32).unwrap()
    );
}

#[test]
fn a_batch_is_processed_in_one_transaction_each_message_as_if_alone() {
    let dir = Dir::new();
    let (mut a, mut b, _c, gid) = three_member_group(&dir, SUITE_DEFAULT);
    let first = a.encrypt(&gid, b"one").unwrap();
    let mut bad = a.encrypt(&gid, b"two").unwrap();
    let n = bad.len();
    bad[n - 3] ^= 1;
    let commit = a.self_update(&gid).unwrap();
    a.merge_pending_commit(&gid).unwrap();
    let after = a.encrypt(&gid, b"three").unwrap();
    let batch = vec![
        first.clone(),
        bad.clone(),
        b"not mls".to_vec(),
        commit.clone(),
        after.clone(),
        first.clone(),
    ];
    let out = b.process_batch(&batch).unwrap();
    assert_eq!(out.len(), 6);
    let plain = |r: &Result<Processed>| r.as_ref().unwrap().plaintext.as_ref().unwrap().to_vec();
    assert_eq!(plain(&out[0]), b"one");
    assert!(out[1].is_err() && out[2].is_err());
    assert_eq!(out[3].as_ref().unwrap().epoch, 2);
    assert_eq!(plain(&out[4]), b"three");
    // The same bytes twice: the journal's answer, as with `process`.
    assert_eq!(plain(&out[5]), b"one");
    assert_eq!(b.epoch(&gid).unwrap(), 2);

    // Durable once returned: a restarted vault answers from its journal; the failed one still fails.
    drop(b);
    let mut b = Vault::open(&dir.path("b.db"), &KEY_B).unwrap();
    let again = b.process_batch(&[after, bad, commit]).unwrap();
    assert_eq!(plain(&again[0]), b"three");
    assert!(again[1].is_err());
    assert_eq!(again[2].as_ref().unwrap().epoch, 2);
    let ct = a.encrypt(&gid, b"four").unwrap();
    assert_eq!(text(&mut b, &ct), b"four");
}
