//! Image inputs given as a URL, a `data:` URI or bare base64, read safely: http(s) only; no
//! private, loopback, link-local or otherwise non-public address (SSRF), checked on every
//! resolution and every redirect, unless explicitly allowed; proxies ignored; a byte cap while
//! streaming, a pixel cap before decoding (decompression bombs), a time limit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use image::RgbaImage;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What an image input may cost.
#[derive(Debug, Clone)]
pub struct FetchLimits {
    /// Largest download or decoded base64 payload, bytes.
    pub max_bytes: usize,
    /// Largest image, pixels (checked from the header, before decoding).
    pub max_pixels: u64,
    /// Time allowed for one download, connection and redirects included.
    pub timeout: Duration,
    /// Redirects followed at most.
    pub max_redirects: usize,
    /// Allow private, loopback and link-local addresses (for trusted networks and tests).
    pub allow_private: bool,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_bytes: 16 * 1024 * 1024,
            max_pixels: 4096 * 4096,
            timeout: Duration::from_secs(15),
            max_redirects: 5,
            allow_private: false,
        }
    }
}

/// Why an image input was refused; the message is meant for the client.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

fn refuse(message: impl Into<String>) -> FetchError {
    FetchError(message.into())
}

/// Whether `ip` is a globally routable unicast address (not private, loopback, link-local,
/// shared, documentation, benchmarking, multicast, reserved or unspecified; IPv4-mapped and
/// NAT64 IPv6 addresses are judged by their IPv4 part).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            let low_v4 = || {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                Ipv4Addr::new(a, b, c, d)
            };
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
                return is_public_v4(low_v4());
            }
            if s[0] == 0x2002 {
                // 6to4 (2002::/16) embeds an IPv4 address in bits 16-48.
                let [a, b] = s[1].to_be_bytes();
                let [c, d] = s[2].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_unspecified()
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64 64:ff9b:1::/48
                || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
                || (s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0) // IPv4-translated ::ffff:0:a.b.c.d
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible ::a.b.c.d, deprecated
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || a >= 240) // reserved
}

/// DNS resolution that drops non-public addresses, so that the connection is made only to
/// addresses that were checked (no DNS-rebinding window).
#[derive(Debug)]
struct PublicResolver {
    allow_private: bool,
}

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(found) => found.collect(),
                Err(_) => Vec::new(),
            };
            let kept: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|addr| allow_private || is_public(addr.ip()))
                .collect();
            if kept.is_empty() {
                // One message for "no address" and "only private addresses": the difference would
                // let clients map internal host names.
                tracing::info!(host, addresses = found.len(), "refused an image host");
                return Err(format!("{host} does not resolve to a public address").into());
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// Refuses a URL that is not http(s), has credentials, or names a non-public IP literally.
fn check_url(url: &Url, allow_private: bool) -> Result<(), FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refuse(format!(
            "only http and https URLs are fetched, not {}:",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("URLs with credentials are not fetched"));
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        Some(url::Host::Domain(_)) => None,
        None => return Err(refuse("the URL has no host")),
    };
    if let Some(ip) = literal
        && !allow_private
        && !is_public(ip)
    {
        return Err(refuse(format!("{ip} is not a public address")));
    }
    Ok(())
}

/// Reads image inputs under [`FetchLimits`].
#[derive(Debug, Clone)]
pub struct ImageFetcher {
    client: reqwest::Client,
    limits: FetchLimits,
    /// Downloads and decodes at once (each may hold `max_bytes` plus a decoded image).
    permits: Arc<tokio::sync::Semaphore>,
}

/// Image inputs read at the same time, at most.
pub const CONCURRENT_LOADS: usize = 4;

impl ImageFetcher {
    /// A fetcher with its own HTTP client (no proxies, checked DNS and redirects).
    pub fn new(limits: FetchLimits) -> Result<Self, String> {
        let (allow_private, max_redirects) = (limits.allow_private, limits.max_redirects);
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                return attempt.error(format!("more than {max_redirects} redirects"));
            }
            match check_url(attempt.url(), allow_private) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(format!("redirected to a refused URL: {e}")),
            }
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(policy)
            .dns_resolver(Arc::new(PublicResolver { allow_private }))
            .timeout(limits.timeout)
            .connect_timeout(limits.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("avatar-http/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the image fetcher: {e}"))?;
        Ok(ImageFetcher {
            client,
            limits,
            permits: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_LOADS)),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &FetchLimits {
        &self.limits
    }

    /// An image from `input`: an http(s) URL, a `data:image/...;base64,` URI, or (when
    /// `bare_base64`) base64 alone.
    pub async fn load(&self, input: &str, bare_base64: bool) -> Result<RgbaImage, FetchError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| refuse("the server is shutting down"))?;
        let input = input.trim();
        let bytes = if let Some(rest) = input.strip_prefix("data:") {
            let (meta, data) = rest
                .split_once(',')
                .ok_or_else(|| refuse("a data URI must be data:image/...;base64,..."))?;
            if !(meta.starts_with("image/") && meta.ends_with(";base64")) {
                return Err(refuse("a data URI must be data:image/...;base64,..."));
            }
            self.base64(data)?
        } else if input.contains("://") {
            self.download(input).await?
        } else if bare_base64 {
            self.base64(input)?
        } else {
            return Err(refuse(
                "expected an http(s) URL or a data:image/...;base64 URI",
            ));
        };
        let limits = self.limits.clone();
        tokio::task::spawn_blocking(move || decode(&bytes, &limits))
            .await
            .map_err(|e| refuse(format!("decoding failed: {e}")))?
    }

    fn base64(&self, data: &str) -> Result<Vec<u8>, FetchError> {
        // 4 base64 characters carry 3 bytes.
        if data.len() / 4 * 3 > self.limits.max_bytes {
            return Err(refuse(format!(
                "the image is larger than {} bytes",
                self.limits.max_bytes
            )));
        }
        let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| refuse(format!("not valid base64: {e}")))
    }

    async fn download(&self, text: &str) -> Result<Vec<u8>, FetchError> {
        let url = Url::parse(text).map_err(|e| refuse(format!("not a valid URL: {e}")))?;
        check_url(&url, self.limits.allow_private)?;
        let mut response = self.client.get(url).send().await.map_err(describe)?;
        if response.status().is_redirection() {
            let target = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or("nowhere")
                .to_owned();
            return Err(refuse(format!(
                "the image URL redirects to {target:?}, which is not followed (only http(s))"
            )));
        }
        if !response.status().is_success() {
            return Err(refuse(format!(
                "the image URL answered {}",
                response.status()
            )));
        }
        let max = self.limits.max_bytes;
        if response.content_length().is_some_and(|n| n > max as u64) {
            return Err(refuse(format!("the image is larger than {max} bytes")));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(describe)? {
            if bytes.len() + chunk.len() > max {
                return Err(refuse(format!("the image is larger than {max} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

/// A client-facing description of a transport error (its causes included: the resolver's and
/// the redirect policy's refusals are there).
fn describe(error: reqwest::Error) -> FetchError {
    let mut message = if error.is_timeout() {
        "fetching the image timed out".to_string()
    } else {
        "cannot fetch the image".to_string()
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    refuse(message)
}

/// Decodes under the pixel cap (read from the header first) and an allocation cap.
pub fn decode(bytes: &[u8], limits: &FetchLimits) -> Result<RgbaImage, FetchError> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| refuse(format!("unreadable image: {e}")))?;
    if reader.format().is_none() {
        return Err(refuse("not an image (PNG, JPEG, WebP, GIF, BMP, ...)"));
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| refuse(format!("not an image: {e}")))?;
    if u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(refuse(format!(
            "{w}x{h} has more than {} pixels",
            limits.max_pixels
        )));
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| refuse(format!("unreadable image: {e}")))?;
    let mut caps = image::Limits::default();
    caps.max_image_width = Some(w);
    caps.max_image_height = Some(h);
    caps.max_alloc = Some(limits.max_pixels.saturating_mul(16).max(64 << 20));
    reader.limits(caps);
    Ok(reader
        .decode()
        .map_err(|e| refuse(format!("not an image: {e}")))?
        .to_rgba8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "64:ff9b:1::a00:1",
            "2002:a00:1::1",
            "2002:7f00:1::",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "100::1",
            "::ffff:0:7f00:1",
            "192.88.99.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_are_checked_before_any_connection() {
        let refused = |url: &str| check_url(&Url::parse(url).unwrap(), false).unwrap_err().0;
        assert!(refused("file:///etc/passwd").contains("only http"));
        assert!(refused("ftp://example.com/a.png").contains("only http"));
        assert!(refused("http://127.0.0.1:8000/a.png").contains("not a public address"));
        assert!(refused("http://[::1]/a.png").contains("not a public address"));
        assert!(refused("http://169.254.169.254/latest/meta-data").contains("not a public"));
        assert!(refused("http://0x7f000001/").contains("not a public address"));
        assert!(refused("http://user:pw@example.com/a.png").contains("credentials"));
        assert!(check_url(&Url::parse("https://example.com/a.png").unwrap(), false).is_ok());
        assert!(check_url(&Url::parse("http://127.0.0.1/a.png").unwrap(), true).is_ok());
    }
}
