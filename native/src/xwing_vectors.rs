//! X-Wing test vectors of draft-connolly-cfrg-xwing-kem (spec/test-vectors.json of the draft's
//! repository, as shipped with the `x-wing` crate): key generation from the 32-byte seed,
//! deterministic encapsulation with `eseed`, and decapsulation. Also checks that the HPKE
//! envelope's key pair derives the same public key from the same seed.

use x_wing::{Decapsulate, KeyExport, KeyInit};

fn h(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn xwing_draft_vectors() {
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("../tests/data/xwing-draft-test-vectors.json")).unwrap();
    let vectors = vectors.as_array().unwrap();
    assert!(!vectors.is_empty());
    for v in vectors {
        let get = |k: &str| h(v[k].as_str().unwrap());
        let seed = get("seed");
        let sk_bytes: [u8; 32] = get("sk").try_into().unwrap();
        assert_eq!(seed.as_slice(), sk_bytes.as_slice(), "sk is the seed");
        let sk = x_wing::DecapsulationKey::new(&sk_bytes.into());
        let pk = sk.encapsulation_key_bytes();
        assert_eq!(pk, get("pk"));

        let eseed: [u8; 64] = get("eseed").try_into().unwrap();
        let ek = x_wing::EncapsulationKey::try_from(pk.as_slice()).unwrap();
        let (ct, ss) = ek.encapsulate_deterministic(&eseed.into());
        assert_eq!(ct.as_slice(), get("ct").as_slice());
        assert_eq!(ss.as_slice(), get("ss").as_slice());
        assert_eq!(sk.decapsulate(&ct).as_slice(), get("ss").as_slice());

        let kp = crate::envelope::HybridKeyPair::from_seed(&seed).unwrap();
        assert_eq!(kp.public_key(), get("pk").as_slice());
    }
}

trait EkBytes {
    fn encapsulation_key_bytes(&self) -> Vec<u8>;
}

impl EkBytes for x_wing::DecapsulationKey {
    fn encapsulation_key_bytes(&self) -> Vec<u8> {
        use x_wing::Decapsulator;
        self.encapsulation_key().to_bytes().to_vec()
    }
}
