//! Certificate contents: what the CA, node and client certificates say. Pure apart from key
//! generation, so tests can make certificates in memory.

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use strstore_protocol::NodeId;
use time::{Duration, OffsetDateTime};

use crate::tls::identity::{node_uri, ClientRole, CLIENT_URI_PREFIX};

/// Start of the common name of the CAs we create; also how an operator recognises one.
/// A random suffix makes every CA's name unique, so that a certificate from another
/// cluster's CA is reported as "unknown issuer" rather than as a bad signature.
pub const CA_COMMON_NAME: &str = "strstore cluster CA";
/// The name of the client certificate `certs` writes unless told another (`client.pem`).
pub const CLIENT_NAME: &str = "client";
/// How long a new CA is valid: long, because replacing it means re-issuing everything.
pub const CA_VALIDITY_DAYS: i64 = 10 * 365;
/// Certificates start being valid this long before they are made, so that a node whose clock
/// is a little behind the machine that ran `certs` does not refuse them as "not valid yet".
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::hours(1);

/// The signing side: the CA's name, key and certificate.
pub type Ca = Issuer<'static, KeyPair>;

/// A certificate with its new private key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From a little before now (an hour, for clock skew) to `days` from now.
    pub fn days_from_now(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self { not_before: now - CLOCK_SKEW_ALLOWANCE, not_after: now + Duration::days(days) }
    }
}

/// A new self-signed CA that may sign end-entity certificates only (path length 0).
pub fn new_ca(validity: Validity) -> Result<(Ca, Issued), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let suffix: String = rand::random::<[u8; 4]>().iter().map(|b| format!("{b:02x}")).collect();
    params.distinguished_name.push(DnType::CommonName, format!("{CA_COMMON_NAME} {suffix}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, validity);
    let cert = params.self_signed(&key)?;
    let issued = Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.into() };
    Ok((Issuer::new(params, key), issued))
}

/// The CA in `cert_pem` (its first certificate) with its private key, to sign more.
pub fn load_ca(cert_pem: &str, key_pem: &str) -> Result<Ca, rcgen::Error> {
    let key = KeyPair::from_pem(key_pem)?;
    Issuer::from_ca_cert_pem(cert_pem, key)
}

/// A certificate for node `id`: the URI `strstore:node:<id>` (its identity, in a field no
/// host name can take) plus `hosts` (DNS names or IP addresses clients reach it at), usable
/// as both TLS server and TLS client, because a node accepts connections and dials them.
pub fn node_cert(
    ca: &Ca,
    id: NodeId,
    hosts: &[String],
    validity: Validity,
) -> Result<Issued, rcgen::Error> {
    let identity = SanType::URI(Ia5String::try_from(node_uri(id))?);
    let usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let common_name = format!("strstore node {id}");
    leaf(ca, &common_name, hosts.to_vec(), vec![identity], usages, validity)
}

/// A certificate for the client `name` with `role` (URIs `strstore:client:<name>` and
/// `strstore:role:<role>`), usable only as a TLS client: it can never pass as a node,
/// because it names no node and cannot serve.
pub fn client_cert(
    ca: &Ca,
    name: &str,
    role: ClientRole,
    validity: Validity,
) -> Result<Issued, rcgen::Error> {
    let usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let holder = SanType::URI(Ia5String::try_from(format!("{CLIENT_URI_PREFIX}{name}"))?);
    let role = SanType::URI(Ia5String::try_from(role.uri())?);
    let mut params_names = vec![holder];
    params_names.push(role);
    leaf(ca, name, Vec::new(), params_names, usages, validity)
}

fn leaf(
    ca: &Ca,
    common_name: &str,
    names: Vec<String>,
    identities: Vec<SanType>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    validity: Validity,
) -> Result<Issued, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params.subject_alt_names.extend(identities);
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity);
    let cert = params.signed_by(&key, ca)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.into() })
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    // Random serials: a renewed certificate never shares its serial with the one it replaces.
    // The top bit is cleared so the serial is a positive DER integer of at most 16 bytes.
    let mut serial = rand::random::<[u8; 16]>();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from(serial.to_vec()));
}
