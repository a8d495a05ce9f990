//! The request metadata every RocketMQ 5 call carries: who the client is,
//! when the request was made, and (with credentials) its signature.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::config::Credentials;

/// Sent as `x-mq-client-version`.
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Adds the RocketMQ headers to every outgoing call. The values that do not
/// change are parsed once, and the date-time header (with its signature)
/// once a second: this runs for every request, and a producer makes tens of
/// thousands a second. tonic clones the interceptor with the client for
/// each call, so the per-second value lives behind a shared lock.
#[derive(Clone)]
pub(crate) struct Headers {
    client_id: Arc<str>,
    client_id_value: MetadataValue<Ascii>,
    namespace: Option<MetadataValue<Ascii>>,
    credentials: Option<Arc<Credentials>>,
    /// The second and its formatted `x-mq-date-time` (and signature).
    now: Arc<Mutex<Option<Stamp>>>,
}

type Stamp = (u64, MetadataValue<Ascii>, Option<MetadataValue<Ascii>>);

impl Headers {
    /// Fails when the client id or namespace is not a valid header value
    /// (not visible ASCII).
    pub fn new(
        client_id: &str,
        namespace: &str,
        credentials: Option<Credentials>,
    ) -> Result<Self, Status> {
        Ok(Headers {
            client_id: client_id.into(),
            client_id_value: value(client_id)?,
            namespace: if namespace.is_empty() {
                None
            } else {
                Some(value(namespace)?)
            },
            credentials: credentials.map(Arc::new),
            now: Arc::new(Mutex::new(None)),
        })
    }
}

fn value(s: &str) -> Result<MetadataValue<Ascii>, Status> {
    s.parse()
        .map_err(|_| Status::invalid_argument(format!("header value {s:?} is not ASCII")))
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

impl Interceptor for Headers {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let cached = {
            let stamp = self.now.lock().unwrap_or_else(|p| p.into_inner());
            match &*stamp {
                Some((s, d, a)) if *s == second => Some((d.clone(), a.clone())),
                _ => None,
            }
        };
        let (date_value, auth_value) = match cached {
            Some(v) => v,
            None => {
                let text = date_time(now);
                let auth = match &self.credentials {
                    Some(c) => Some(value(&authorization(c, &text))?),
                    None => None,
                };
                let d = value(&text)?;
                *self.now.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((second, d.clone(), auth.clone()));
                (d, auth)
            }
        };
        let id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
        let md = req.metadata_mut();
        md.insert("x-mq-client-id", self.client_id_value.clone());
        md.insert("x-mq-language", MetadataValue::from_static("RUST"));
        md.insert("x-mq-protocol", MetadataValue::from_static("v2"));
        // Ferry then delivers CRC32 body digests (which `from_wire` checks)
        // instead of MD5, a tenth of a consumer's CPU; other brokers ignore it.
        md.insert(
            ferry_proto::ext::ACCEPT_DIGEST_HEADER,
            MetadataValue::from_static("CRC32"),
        );
        md.insert(
            "x-mq-client-version",
            MetadataValue::from_static(CLIENT_VERSION),
        );
        md.insert(
            "x-mq-request-id",
            value(&format!("{}-{id}", self.client_id))?,
        );
        md.insert("x-mq-date-time", date_value);
        if let Some(ns) = &self.namespace {
            md.insert("x-mq-namespace", ns.clone());
        }
        if let Some(a) = auth_value {
            md.insert("authorization", a);
        }
        Ok(req)
    }
}

/// `MQv2-HMAC-SHA1` over the date-time header, as RocketMQ ACL checks it.
pub(crate) fn authorization(c: &Credentials, date_time: &str) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(c.secret_key.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(date_time.as_bytes());
    let signature = hex::encode_upper(mac.finalize().into_bytes());
    format!(
        "MQv2-HMAC-SHA1 Credential={}, SignedHeaders=x-mq-date-time, Signature={signature}",
        c.access_key
    )
}

/// `yyyyMMddTHHmmssZ` in UTC, the format of `x-mq-date-time`.
pub(crate) fn date_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

static CLIENT_INDEX: AtomicU64 = AtomicU64::new(0);

/// A client id unique on this host: `hostname@pid@index@start`.
pub(crate) fn new_client_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{}@{}@{}@{}",
        hostname(),
        std::process::id(),
        CLIENT_INDEX.fetch_add(1, Ordering::Relaxed),
        radix36(nanos)
    )
}

/// This host's name, read once: every message carries it as `born_host`.
pub(crate) fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && h.is_ascii())
            .unwrap_or_else(|| "localhost".to_string())
    })
}

fn radix36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn clones_share_the_per_second_stamp() {
        let h = Headers::new(
            "c1",
            "ns",
            Some(Credentials {
                access_key: "ak".into(),
                secret_key: "sk".into(),
            }),
        )
        .unwrap();
        let mut a = h.clone();
        let req = a.call(Request::new(())).unwrap();
        assert!(h.now.lock().unwrap().is_some(), "filled through a clone");
        let md = req.metadata();
        assert_eq!(md.get("x-mq-client-id").unwrap(), "c1");
        assert_eq!(md.get("x-mq-namespace").unwrap(), "ns");
        let date = md.get("x-mq-date-time").unwrap().to_str().unwrap();
        let auth = md.get("authorization").unwrap().to_str().unwrap();
        assert_eq!(
            auth,
            authorization(
                &Credentials {
                    access_key: "ak".into(),
                    secret_key: "sk".into(),
                },
                date
            ),
            "the signature is over the date sent with it"
        );
        assert!(Headers::new("bad\nid", "", None).is_err());
    }

    #[test]
    fn date_time_is_utc_compact() {
        assert_eq!(date_time(UNIX_EPOCH), "19700101T000000Z");
        // 2024-02-29 23:59:58 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_198);
        assert_eq!(date_time(t), "20240229T235958Z");
    }

    #[test]
    fn signature_is_hmac_sha1_of_the_date() {
        let c = Credentials {
            access_key: "ak".into(),
            secret_key: "key".into(),
        };
        // HMAC-SHA1("key", "The quick brown fox jumps over the lazy dog")
        let a = authorization(&c, "The quick brown fox jumps over the lazy dog");
        assert!(
            a.ends_with("Signature=DE7C9B85B8B78AA6BC8A7A36F70A90701C9DB4D9"),
            "{a}"
        );
        assert!(a.starts_with("MQv2-HMAC-SHA1 Credential=ak, SignedHeaders=x-mq-date-time"));
    }

    #[test]
    fn client_ids_differ() {
        assert_ne!(new_client_id(), new_client_id());
        assert_eq!(radix36(0), "0");
        assert_eq!(radix36(36 * 36 + 35), "10z");
    }
}
