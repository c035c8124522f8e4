//! RFC 9807 Appendix C.1.1 and C.1.2 (OPAQUE-3DH real test vectors, ristretto255-SHA512,
//! KSF Identity) run through this module's wrapper, plus round trips with the Argon2id suite.

use super::*;
use opaque_ke::rand::rngs::OsRng;

fn h(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A deterministic RNG for known-answer tests. opaque-ke draws some randomness that the RFC
/// vectors do not fix (the fake record on the server is built on every login), so the RNG
/// serves filler bytes for the first calls and the scripted values for the last `tail.len()`
/// calls. A first "counting" run (no tail) learns how many calls an operation makes.
struct ScriptRng {
    total_calls: usize,
    tail: Vec<Vec<u8>>,
    calls: usize,
}

impl ScriptRng {
    fn counting() -> Self {
        ScriptRng {
            total_calls: usize::MAX,
            tail: vec![],
            calls: 0,
        }
    }
    fn with_tail(total_calls: usize, tail: Vec<Vec<u8>>) -> Self {
        ScriptRng {
            total_calls,
            tail,
            calls: 0,
        }
    }
}

impl RngCore for ScriptRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let idx = self.calls;
        self.calls += 1;
        let first_tail = self.total_calls.saturating_sub(self.tail.len());
        if idx >= first_tail && self.total_calls != usize::MAX {
            let v = &self.tail[idx - first_tail];
            assert!(
                v.len() <= dest.len(),
                "scripted value longer than the request"
            );
            // A 32-byte scalar requested as 64 bytes (wide reduction): pad with zeros.
            dest.fill(0);
            dest[..v.len()].copy_from_slice(v);
        } else {
            dest.fill(0x5a);
        }
    }
    fn try_fill_bytes(
        &mut self,
        dest: &mut [u8],
    ) -> std::result::Result<(), opaque_ke::rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for ScriptRng {}

/// Runs `f` once with a counting RNG, then with the scripted tail; returns the second result.
fn scripted<T>(tail: Vec<Vec<u8>>, mut f: impl FnMut(&mut ScriptRng) -> T) -> T {
    let mut counter = ScriptRng::counting();
    let _ = f(&mut counter);
    let mut rng = ScriptRng::with_tail(counter.calls, tail);
    let out = f(&mut rng);
    assert_eq!(rng.calls, counter.calls);
    out
}

struct Vector {
    client_identity: Option<Vec<u8>>,
    server_identity: Option<Vec<u8>>,
    oprf_seed: Vec<u8>,
    credential_identifier: Vec<u8>,
    password: Vec<u8>,
    envelope_nonce: Vec<u8>,
    masking_nonce: Vec<u8>,
    server_private_key: Vec<u8>,
    server_public_key: Vec<u8>,
    server_nonce: Vec<u8>,
    client_nonce: Vec<u8>,
    client_keyshare_seed: Vec<u8>,
    server_keyshare_seed: Vec<u8>,
    blind_registration: Vec<u8>,
    blind_login: Vec<u8>,
    registration_request: Vec<u8>,
    registration_response: Vec<u8>,
    registration_upload: Vec<u8>,
    ke1: Vec<u8>,
    ke2: Vec<u8>,
    ke3: Vec<u8>,
    export_key: Vec<u8>,
    session_key: Vec<u8>,
}

/// Input values shared by C.1.1 and C.1.2.
fn common_inputs(client_identity: Option<&str>, server_identity: Option<&str>) -> Vector {
    Vector {
        client_identity: client_identity.map(h),
        server_identity: server_identity.map(h),
        oprf_seed: h("f433d0227b0b9dd54f7c4422b600e764e47fb503f1f9a0f0a47c6606b054a7fdc65347f1a08f277e22358bbabe26f823fca82c7848e9a75661f4ec5d5c1989ef"),
        credential_identifier: h("31323334"),
        password: h("436f7272656374486f72736542617474657279537461706c65"),
        envelope_nonce: h("ac13171b2f17bc2c74997f0fce1e1f35bec6b91fe2e12dbd323d23ba7a38dfec"),
        masking_nonce: h("38fe59af0df2c79f57b8780278f5ae47355fe1f817119041951c80f612fdfc6d"),
        server_private_key: h("47451a85372f8b3537e249d7b54188091fb18edde78094b43e2ba42b5eb89f0d"),
        server_public_key: h("b2fe7af9f48cc502d016729d2fe25cdd433f2c4bc904660b2a382c9b79df1a78"),
        server_nonce: h("71cd9960ecef2fe0d0f7494986fa3d8b2bb01963537e60efb13981e138e3d4a1"),
        client_nonce: h("da7e07376d6d6f034cfa9bb537d11b8c6b4238c334333d1f0aebb380cae6a6cc"),
        client_keyshare_seed: h("82850a697b42a505f5b68fcdafce8c31f0af2b581f063cf1091933541936304b"),
        server_keyshare_seed: h("05a4f54206eef1ba2f615bc0aa285cb22f26d1153b5b40a1e85ff80da12f982f"),
        blind_registration: h("76cfbfe758db884bebb33582331ba9f159720ca8784a2a070a265d9c2d6abe01"),
        blind_login: h("6ecc102d2e7a7cf49617aad7bbe188556792d4acd60a1a8a8d2b65d4b0790308"),
        registration_request: h("5059ff249eb1551b7ce4991f3336205bde44a105a032e747d21bf382e75f7a71"),
        registration_response: h("7408a268083e03abc7097fc05b587834539065e86fb0c7b6342fcf5e01e5b019b2fe7af9f48cc502d016729d2fe25cdd433f2c4bc904660b2a382c9b79df1a78"),
        registration_upload: vec![],
        ke1: h("c4dedb0ba6ed5d965d6f250fbe554cd45cba5dfcce3ce836e4aee778aa3cd44dda7e07376d6d6f034cfa9bb537d11b8c6b4238c334333d1f0aebb380cae6a6cc6e29bee50701498605b2c085d7b241ca15ba5c32027dd21ba420b94ce60da326"),
        ke2: vec![],
        ke3: vec![],
        export_key: h("1ef15b4fa99e8a852412450ab78713aad30d21fa6966c9b8c9fb3262a970dc62950d4dd4ed62598229b1b72794fc0335199d9f7fcc6eaedde92cc04870e63f16"),
        session_key: vec![],
    }
}

fn vector_c11() -> Vector {
    let mut v = common_inputs(None, None);
    v.registration_upload = h("76a845464c68a5d2f7e442436bb1424953b17d3e2e289ccbaccafb57ac5c36751ac5844383c7708077dea41cbefe2fa15724f449e535dd7dd562e66f5ecfb95864eadddec9db5874959905117dad40a4524111849799281fefe3c51fa82785c5ac13171b2f17bc2c74997f0fce1e1f35bec6b91fe2e12dbd323d23ba7a38dfec634b0f5b96109c198a8027da51854c35bee90d1e1c781806d07d49b76de6a28b8d9e9b6c93b9f8b64d16dddd9c5bfb5fea48ee8fd2f75012a8b308605cdd8ba5");
    v.ke2 = h("7e308140890bcde30cbcea28b01ea1ecfbd077cff62c4def8efa075aabcbb47138fe59af0df2c79f57b8780278f5ae47355fe1f817119041951c80f612fdfc6dd6ec60bcdb26dc455ddf3e718f1020490c192d70dfc7e403981179d8073d1146a4f9aa1ced4e4cd984c657eb3b54ced3848326f70331953d91b02535af44d9fedc80188ca46743c52786e0382f95ad85c08f6afcd1ccfbff95e2bdeb015b166c6b20b92f832cc6df01e0b86a7efd92c1c804ff865781fa93f2f20b446c8371b671cd9960ecef2fe0d0f7494986fa3d8b2bb01963537e60efb13981e138e3d4a1c4f62198a9d6fa9170c42c3c71f1971b29eb1d5d0bd733e40816c91f7912cc4a660c48dae03e57aaa38f3d0cffcfc21852ebc8b405d15bd6744945ba1a93438a162b6111699d98a16bb55b7bdddfe0fc5608b23da246e7bd73b47369169c5c90");
    v.ke3 = h("4455df4f810ac31a6748835888564b536e6da5d9944dfea9e34defb9575fe5e2661ef61d2ae3929bcf57e53d464113d364365eb7d1a57b629707ca48da18e442");
    v.session_key = h("42afde6f5aca0cfa5c163763fbad55e73a41db6b41bc87b8e7b62214a8eedc6731fa3cb857d657ab9b3764b89a84e91ebcb4785166fbb02cedfcbdfda215b96f");
    v
}

fn vector_c12() -> Vector {
    let mut v = common_inputs(Some("616c696365"), Some("626f62"));
    v.registration_upload = h("76a845464c68a5d2f7e442436bb1424953b17d3e2e289ccbaccafb57ac5c36751ac5844383c7708077dea41cbefe2fa15724f449e535dd7dd562e66f5ecfb95864eadddec9db5874959905117dad40a4524111849799281fefe3c51fa82785c5ac13171b2f17bc2c74997f0fce1e1f35bec6b91fe2e12dbd323d23ba7a38dfec1ac902dc5589e9a5f0de56ad685ea8486210ef41449cd4d8712828913c5d2b680b2b3af4a26c765cff329bfb66d38ecf1d6cfa9e7a73c222c6efe0d9520f7d7c");
    v.ke2 = h("7e308140890bcde30cbcea28b01ea1ecfbd077cff62c4def8efa075aabcbb47138fe59af0df2c79f57b8780278f5ae47355fe1f817119041951c80f612fdfc6dd6ec60bcdb26dc455ddf3e718f1020490c192d70dfc7e403981179d8073d1146a4f9aa1ced4e4cd984c657eb3b54ced3848326f70331953d91b02535af44d9fea502150b67fe36795dd8914f164e49f81c7688a38928372134b7dccd50e09f8fed9518b7b2f94835b3c4fe4c8475e7513f20eb97ff0568a39caee3fd6251876f71cd9960ecef2fe0d0f7494986fa3d8b2bb01963537e60efb13981e138e3d4a1c4f62198a9d6fa9170c42c3c71f1971b29eb1d5d0bd733e40816c91f7912cc4a292371e7809a9031743e943fb3b56f51de903552fc91fba4e7419029951c3970b2e2f0a9dea218d22e9e4e0000855bb6421aa3610d6fc0f4033a6517030d4341");
    v.ke3 = h("7a026de1d6126905736c3f6d92463a08d209833eb793e46d0f7f15b3e0f62c7643763c02bbc6b8d3d15b63250cae98171e9260f1ffa789750f534ac11a0176d5");
    v.session_key = h("ae7951123ab5befc27e62e63f52cf472d6236cb386c968cc47b7e34f866aa4bc7638356a73cfce92becf39d6a7d32a1861f12130e824241fe6cab34fbd471a57");
    v
}

fn run_vector(v: &Vector) {
    let params = Params {
        context: b"OPAQUE-POC",
        client_identity: v.client_identity.as_deref(),
        server_identity: v.server_identity.as_deref(),
    };
    let mut setup_bytes = v.oprf_seed.clone();
    setup_bytes.extend_from_slice(&v.server_private_key);
    setup_bytes.extend_from_slice(&v.server_public_key);
    let server = Server::<Identity>::from_bytes(&setup_bytes).unwrap();
    assert_eq!(server.public_key(), v.server_public_key);

    // Registration.
    let (_, request) = scripted(vec![v.blind_registration.clone()], |rng| {
        ClientRegistrationFlow::<Identity>::start(rng, &v.password).unwrap()
    });
    assert_eq!(request, v.registration_request);
    let response = server
        .registration_start(&v.credential_identifier, &request)
        .unwrap();
    assert_eq!(response, v.registration_response);
    let reg = scripted(vec![v.envelope_nonce.clone()], |rng| {
        let (flow, _) = ClientRegistrationFlow::<Identity>::start(
            &mut ScriptRng::with_tail(1, vec![v.blind_registration.clone()]),
            &v.password,
        )
        .unwrap();
        flow.finish(rng, &response, &params).unwrap()
    });
    assert_eq!(reg.upload, v.registration_upload);
    assert_eq!(reg.export_key.as_slice(), v.export_key.as_slice());
    let password_file = Server::<Identity>::registration_finish(&reg.upload).unwrap();

    // Login: KE1.
    let client_tail = vec![
        v.blind_login.clone(),
        v.client_keyshare_seed.clone(),
        v.client_nonce.clone(),
    ];
    let (_, ke1) = scripted(client_tail.clone(), |rng| {
        ClientLoginFlow::<Identity>::start(rng, &v.password).unwrap()
    });
    assert_eq!(ke1, v.ke1);

    // KE2.
    let (ke2, state) = scripted(
        vec![
            v.masking_nonce.clone(),
            v.server_keyshare_seed.clone(),
            v.server_nonce.clone(),
        ],
        |rng| {
            server
                .login_start(
                    rng,
                    &v.credential_identifier,
                    Some(&password_file),
                    &ke1,
                    &params,
                )
                .unwrap()
        },
    );
    assert_eq!(ke2, v.ke2);

    // KE3.
    let (flow, _) =
        ClientLoginFlow::<Identity>::start(&mut ScriptRng::with_tail(3, client_tail), &v.password)
            .unwrap();
    let out = flow.finish(&mut OsRng, &ke2, &params).unwrap();
    assert_eq!(out.finalization, v.ke3);
    assert_eq!(out.session_key.as_slice(), v.session_key.as_slice());
    assert_eq!(out.export_key.as_slice(), v.export_key.as_slice());
    assert_eq!(out.server_public_key, v.server_public_key);

    let server_key = Server::<Identity>::login_finish(&state, &out.finalization, &params).unwrap();
    assert_eq!(server_key.as_slice(), v.session_key.as_slice());
}

#[test]
fn rfc9807_c_1_1_real_vector_1() {
    run_vector(&vector_c11());
}

#[test]
fn rfc9807_c_1_2_real_vector_2_with_identities() {
    run_vector(&vector_c12());
}

fn register(server: &Server<AppArgon2>, user: &[u8], password: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let p = Params::default();
    let (flow, req) = ClientRegistrationFlow::<AppArgon2>::start(&mut OsRng, password).unwrap();
    let resp = server.registration_start(user, &req).unwrap();
    let out = flow.finish(&mut OsRng, &resp, &p).unwrap();
    (
        Server::<AppArgon2>::registration_finish(&out.upload).unwrap(),
        out.export_key.to_vec(),
    )
}

fn login(
    server: &Server<AppArgon2>,
    user: &[u8],
    file: Option<&[u8]>,
    password: &[u8],
) -> Result<(Vec<u8>, Vec<u8>)> {
    let p = Params::default();
    let (flow, ke1) = ClientLoginFlow::<AppArgon2>::start(&mut OsRng, password)?;
    let (ke2, state) = server.login_start(&mut OsRng, user, file, &ke1, &p)?;
    let out = flow.finish(&mut OsRng, &ke2, &p)?;
    let server_key = Server::<AppArgon2>::login_finish(&state, &out.finalization, &p)?;
    Ok((out.session_key.to_vec(), server_key.to_vec()))
}

#[test]
fn argon2_suite_round_trip_wrong_password_and_unknown_user() {
    let server = Server::<AppArgon2>::generate(&mut OsRng);
    let server = Server::<AppArgon2>::from_bytes(&server.to_bytes()).unwrap();
    let (file, _export) = register(&server, b"alice", b"correct horse");

    let (c, s) = login(&server, b"alice", Some(&file), b"correct horse").unwrap();
    assert_eq!(c, s);
    assert_eq!(c.len(), 64);

    let wrong = login(&server, b"alice", Some(&file), b"wrong horse");
    assert!(
        matches!(wrong, Err(Error::Opaque(_))),
        "wrong password accepted"
    );
    let unknown = login(&server, b"mallory", None, b"whatever");
    assert!(
        matches!(unknown, Err(Error::Opaque(_))),
        "unknown user accepted"
    );
    // Same error text for both, so the caller cannot tell them apart.
    assert_eq!(
        wrong.err().unwrap().to_string(),
        unknown.err().unwrap().to_string()
    );
    // A KE2 for an unknown user has the same size as for a known user.
    let (_, ke1) = ClientLoginFlow::<AppArgon2>::start(&mut OsRng, b"x").unwrap();
    let p = Params::default();
    let (ke2_known, _) = server
        .login_start(&mut OsRng, b"alice", Some(&file), &ke1, &p)
        .unwrap();
    let (ke2_fake, _) = server
        .login_start(&mut OsRng, b"nobody", None, &ke1, &p)
        .unwrap();
    assert_eq!(ke2_known.len(), ke2_fake.len());

    assert!(matches!(
        server.registration_start(b"x", b"short"),
        Err(Error::Malformed(_))
    ));
}
