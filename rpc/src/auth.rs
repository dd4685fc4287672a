//! HELLO challenge-response on a shared secret, HMAC-SHA256 (PROTOCOL.md,
//! "Authentication").
//!
//! The client proves it knows the secret by MACing the server's fresh nonce; the
//! server proves the same back over the client's nonce, so each side knows the
//! other holds the secret. Nonces come from the OS random source and are never
//! reused; this module only computes and compares. The comparison is constant
//! time (`hmac`'s `verify_slice`).
//!
//! What is MACed, byte for byte (`||` is concatenation):
//!
//! ```text
//! HMAC-SHA256(secret, label || server_nonce[32] || client_nonce[32]
//!                     || u64 LE len(client_name) || client_name)
//! label = "CVA-RPC-HELLO-CLIENT-V1" (client's proof) or "CVA-RPC-HELLO-SERVER-V1"
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::RpcError;
use crate::limits::{NONCE_LEN, PROOF_LEN, SECRET_LEN_MIN};

type HmacSha256 = Hmac<Sha256>;

/// Domain label of the client's proof.
pub const LABEL_CLIENT: &[u8] = b"CVA-RPC-HELLO-CLIENT-V1";
/// Domain label of the server's proof.
pub const LABEL_SERVER: &[u8] = b"CVA-RPC-HELLO-SERVER-V1";

/// A secret a server or client may be configured with: at least SECRET_LEN_MIN
/// bytes.
pub fn check_secret(secret: &[u8]) -> Result<(), RpcError> {
    if secret.len() < SECRET_LEN_MIN {
        return Err(RpcError::SecretTooShort {
            len: secret.len(),
            min: SECRET_LEN_MIN,
        });
    }
    Ok(())
}

/// The secret a secret file holds: its bytes without one trailing newline (so a
/// file written by `echo` holds the secret typed), checked as `check_secret`. The
/// server and its clients read the same file the same way.
pub fn secret_from_file(mut bytes: Vec<u8>) -> Result<Vec<u8>, RpcError> {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    check_secret(&bytes)?;
    Ok(bytes)
}

fn mac(
    secret: &[u8],
    label: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
    client_name: &str,
) -> HmacSha256 {
    // HMAC is defined for keys of every length (long ones are hashed first).
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret)
        .expect("HMAC-SHA256 accepts a key of any length");
    m.update(label);
    m.update(server_nonce);
    m.update(client_nonce);
    m.update(&(client_name.len() as u64).to_le_bytes());
    m.update(client_name.as_bytes());
    m
}

/// The client's proof for its second HELLO.
pub fn prove(
    secret: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
    client_name: &str,
) -> [u8; PROOF_LEN] {
    mac(
        secret,
        LABEL_CLIENT,
        server_nonce,
        client_nonce,
        client_name,
    )
    .finalize()
    .into_bytes()
    .into()
}

/// The server's check of a client's proof, in constant time.
pub fn verify(
    secret: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
    client_name: &str,
    proof: &[u8; PROOF_LEN],
) -> Result<(), RpcError> {
    mac(
        secret,
        LABEL_CLIENT,
        server_nonce,
        client_nonce,
        client_name,
    )
    .verify_slice(proof)
    .map_err(|_| RpcError::AuthFailed { who: "client" })
}

/// The server's proof in its OK HELLO reply.
pub fn prove_server(
    secret: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
    client_name: &str,
) -> [u8; PROOF_LEN] {
    mac(
        secret,
        LABEL_SERVER,
        server_nonce,
        client_nonce,
        client_name,
    )
    .finalize()
    .into_bytes()
    .into()
}

/// The client's check of the server's proof, in constant time.
pub fn verify_server(
    secret: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
    client_name: &str,
    proof: &[u8; PROOF_LEN],
) -> Result<(), RpcError> {
    mac(
        secret,
        LABEL_SERVER,
        server_nonce,
        client_nonce,
        client_name,
    )
    .verify_slice(proof)
    .map_err(|_| RpcError::AuthFailed { who: "server" })
}

/// A fresh random nonce from the kernel (getrandom).
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    // SAFETY: getrandom writes at most `n.len()` bytes into the live buffer.
    let got = unsafe { libc::getrandom(n.as_mut_ptr().cast(), n.len(), 0) };
    assert_eq!(got, NONCE_LEN as isize, "getrandom failed");
    n
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_secret_file_loses_one_trailing_newline() {
        let s = b"0123456789abcdef";
        let with = |tail: &[u8]| secret_from_file([&s[..], tail].concat());
        assert_eq!(with(b"\n").unwrap(), s);
        assert_eq!(with(b"").unwrap(), s);
        assert_eq!(with(b"\n\n").unwrap(), [&s[..], b"\n"].concat());
        assert!(secret_from_file(b"short\n".to_vec()).is_err());
    }

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-shared";
    const SN: [u8; 32] = [7; 32];
    const CN: [u8; 32] = [9; 32];

    #[test]
    fn proof_verifies_and_binds_every_input() {
        let p = prove(SECRET, &SN, &CN, "cva-a");
        verify(SECRET, &SN, &CN, "cva-a", &p).unwrap();
        assert!(verify(b"0123456789abcdef-other", &SN, &CN, "cva-a", &p).is_err());
        assert!(verify(SECRET, &[8; 32], &CN, "cva-a", &p).is_err());
        assert!(verify(SECRET, &SN, &[8; 32], "cva-a", &p).is_err());
        assert!(verify(SECRET, &SN, &CN, "cva-b", &p).is_err());
        let mut bad = p;
        bad[31] ^= 1;
        assert!(matches!(
            verify(SECRET, &SN, &CN, "cva-a", &bad),
            Err(RpcError::AuthFailed { who: "client" })
        ));
    }

    #[test]
    fn roles_are_separated() {
        let client = prove(SECRET, &SN, &CN, "cva-a");
        let server = prove_server(SECRET, &SN, &CN, "cva-a");
        assert_ne!(client, server);
        verify_server(SECRET, &SN, &CN, "cva-a", &server).unwrap();
        assert!(verify_server(SECRET, &SN, &CN, "cva-a", &client).is_err());
        assert!(verify(SECRET, &SN, &CN, "cva-a", &server).is_err());
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn known_answers() {
        // Computed outside Rust (Python's hmac module) from the layout in the
        // module doc, so a change of what is MACed cannot go unnoticed.
        assert_eq!(
            hex(&prove(SECRET, &SN, &CN, "cva-a")),
            "8b2a52aad343a99fc212afe45bac0dbf5c639b4d8542af2a47545873136e704c"
        );
        assert_eq!(
            hex(&prove_server(SECRET, &SN, &CN, "cva-a")),
            "c18cfe5fa2136c0416a43e8da4005a8bd506b5cb69748d778bfbc51cb5d9a175"
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(check_secret(&[1; 15]).is_err());
        assert!(check_secret(&[1; 16]).is_ok());
    }
}
