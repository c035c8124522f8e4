//! `bench {members, iterations}`: what mls-rs spends on each group operation in a group of
//! `members`, every member a client in this process with its state in memory (mls-rs's default
//! storage), so that bench/native_bench.py can put it beside the vault in the same run. The steps
//! are the ones the Python side takes with vaults: one member creates the group and adds all the
//! others in one commit, a second one joins; then, measured, application messages (encrypted by
//! the first, decrypted by the second; bytes in and out, as the vault takes and returns them),
//! empty commits with an update path (made and applied by the first, processed by the second),
//! messages again once ten commits are behind, and commits adding one new member each.
//!
//! With `durable_dir`, the two measured members keep their state as the vault does: in an
//! SQLCipher file each (mls-rs's SQLite provider: WAL, `synchronous = FULL`, a raw 32-byte key,
//! eight past epochs kept), and each measured operation ends with `write_to_storage`, so that
//! what it changed (ratchets, epoch) is on disk before it returns.
//!
//! Figures are process CPU microseconds per operation (mls-rs runs on this one thread).

use std::path::Path;

use mls_rs::client_builder::MlsConfig;
use mls_rs::error::IntoAnyError;
use mls_rs::storage_provider::sqlite::connection_strategy::{
    CipheredConnectionStrategy, ConnectionStrategy, FileConnectionStrategy, SqlCipherConfig,
    SqlCipherKey,
};
use mls_rs::storage_provider::sqlite::{
    JournalMode, SqLiteDataStorageEngine, SqLiteDataStorageError,
};
use mls_rs::{CipherSuiteProvider, Client, ExtensionList, Group, MlsMessage};
use serde_json::{json, Value};

use crate::{err, new_client, suite_provider, with_identity};

/// Past epochs whose secrets a durable member keeps (the vault's `MAX_PAST_EPOCHS`).
const PAST_EPOCHS: u64 = 8;

/// SQLCipher connections as durable as the vault's (the engine switches them to WAL).
struct Durable(CipheredConnectionStrategy<FileConnectionStrategy>);

impl ConnectionStrategy for Durable {
    fn make_connection(&self) -> Result<rusqlite::Connection, SqLiteDataStorageError> {
        let connection = self.0.make_connection()?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| SqLiteDataStorageError::SqlEngineError(e.into()))?;
        Ok(connection)
    }
}

/// A member whose groups and key packages live in the SQLCipher file at `path`.
fn durable_client(path: &Path) -> Result<Client<impl MlsConfig>, String> {
    let mut key = [0u8; 32];
    suite_provider()
        .random_bytes(&mut key)
        .map_err(|e| err(e.into_any_error()))?;
    let strategy = CipheredConnectionStrategy::new(
        FileConnectionStrategy::new(path),
        SqlCipherConfig::new(SqlCipherKey::RawKey(key)),
    );
    let engine = SqLiteDataStorageEngine::new(Durable(strategy))
        .map_err(err)?
        .with_journal_mode(Some(JournalMode::Wal));
    let builder = Client::builder()
        .group_state_storage(
            engine
                .group_state_storage()
                .map_err(err)?
                .with_max_epoch_retention(PAST_EPOCHS),
        )
        .key_package_repo(engine.key_package_storage().map_err(err)?);
    Ok(with_identity!(builder).0)
}

const PAYLOAD: [u8; 100] = [0x5a; 100];

/// Process CPU time in microseconds.
fn cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// Runs `op` `count` times; CPU microseconds per run.
fn per_op(count: usize, mut op: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    let started = cpu_us();
    for _ in 0..count {
        op()?;
    }
    Ok((cpu_us() - started) / count.max(1) as f64)
}

fn key_package() -> Result<MlsMessage, String> {
    let (client, _, _) = new_client();
    client
        .generate_key_package_message(ExtensionList::new(), ExtensionList::new(), None)
        .map_err(err)
}

pub fn run(members: usize, iterations: usize, durable_dir: Option<&Path>) -> Result<Value, String> {
    if members < 2 || iterations == 0 {
        return Err("a group of at least 2 members and at least one iteration".into());
    }
    match durable_dir {
        None => measure(new_client().0, new_client().0, false, members, iterations),
        Some(dir) => measure(
            durable_client(&dir.join("alice.db"))?,
            durable_client(&dir.join("bob.db"))?,
            true,
            members,
            iterations,
        ),
    }
}

/// Stores the group's state if the members are durable (inside the measured time).
fn keep<C: MlsConfig>(group: &mut Group<C>, durable: bool) -> Result<(), String> {
    if durable {
        group.write_to_storage().map_err(err)?;
    }
    Ok(())
}

fn measure<C: MlsConfig>(
    creator: Client<C>,
    joiner: Client<C>,
    durable: bool,
    members: usize,
    iterations: usize,
) -> Result<Value, String> {
    let mut key_packages = vec![joiner
        .generate_key_package_message(ExtensionList::new(), ExtensionList::new(), None)
        .map_err(err)?];
    for _ in 2..members {
        key_packages.push(key_package()?);
    }
    let mut alice = creator
        .create_group(ExtensionList::new(), ExtensionList::new(), None)
        .map_err(err)?;
    let mut builder = alice.commit_builder();
    for kp in key_packages {
        builder = builder.add_member(kp).map_err(err)?;
    }
    let output = builder.build().map_err(err)?;
    alice.apply_pending_commit().map_err(err)?;
    keep(&mut alice, durable)?;
    let welcome = output.welcome_messages().first().ok_or("no welcome")?;
    let (mut bob, _) = joiner.join_group(None, welcome, None).map_err(err)?;
    keep(&mut bob, durable)?;

    let messages = |alice: &mut Group<C>, bob: &mut Group<C>| -> Result<(f64, f64), String> {
        let mut sent = Vec::with_capacity(iterations);
        let encrypt = per_op(iterations, || {
            let msg = alice
                .encrypt_application_message(&PAYLOAD, vec![])
                .map_err(err)?;
            keep(alice, durable)?;
            sent.push(msg.to_bytes().map_err(err)?);
            Ok(())
        })?;
        let mut received = sent.iter();
        let decrypt = per_op(iterations, || {
            let bytes = received.next().ok_or("no message left")?;
            let msg = MlsMessage::from_bytes(bytes).map_err(err)?;
            bob.process_incoming_message(msg).map_err(err)?;
            keep(bob, durable)?;
            Ok(())
        })?;
        Ok((encrypt, decrypt))
    };
    let (encrypt, decrypt) = messages(&mut alice, &mut bob)?;

    let commits_measured = iterations.clamp(1, 10);
    let mut commits = Vec::with_capacity(commits_measured);
    let commit = per_op(commits_measured, || {
        let output = alice.commit_builder().build().map_err(err)?;
        alice.apply_pending_commit().map_err(err)?;
        keep(&mut alice, durable)?;
        commits.push(output.commit_message().to_bytes().map_err(err)?);
        Ok(())
    })?;
    let mut incoming = commits.iter();
    let process_commit = per_op(commits_measured, || {
        let bytes = incoming.next().ok_or("no commit left")?;
        let msg = MlsMessage::from_bytes(bytes).map_err(err)?;
        bob.process_incoming_message(msg).map_err(err)?;
        keep(&mut bob, durable)?;
        Ok(())
    })?;
    for _ in commits_measured..10 {
        let output = alice.commit_builder().build().map_err(err)?;
        alice.apply_pending_commit().map_err(err)?;
        keep(&mut alice, durable)?;
        bob.process_incoming_message(output.commit_message().clone())
            .map_err(err)?;
        keep(&mut bob, durable)?;
    }
    let (encrypt_after, decrypt_after) = messages(&mut alice, &mut bob)?;

    let adds = iterations.clamp(1, 5);
    let fresh = (0..adds)
        .map(|_| key_package())
        .collect::<Result<Vec<_>, _>>()?;
    let mut fresh = fresh.into_iter();
    let mut add_commits = Vec::with_capacity(adds);
    let add = per_op(adds, || {
        let kp = fresh.next().ok_or("no key package left")?;
        let output = alice
            .commit_builder()
            .add_member(kp)
            .map_err(err)?
            .build()
            .map_err(err)?;
        alice.apply_pending_commit().map_err(err)?;
        keep(&mut alice, durable)?;
        add_commits.push(output.commit_message().clone());
        Ok(())
    })?;
    for commit in add_commits {
        bob.process_incoming_message(commit).map_err(err)?;
    }
    Ok(json!({"figures": {
        "encrypt": encrypt,
        "decrypt": decrypt,
        "commit": commit,
        "process_commit": process_commit,
        "encrypt_after_commits": encrypt_after,
        "decrypt_after_commits": decrypt_after,
        "add": add,
    }}))
}
