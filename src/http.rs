//! What the core sees of a request and a response, and the changes it asks for.
//!
//! The core asks for every field of a repeated header where it needs them (HTTP/1.1 clients may
//! send `Cookie` several times; Envoy's single-value getter returns the first only): the adapter
//! then reads the whole map (one host call) and keeps it, so later lookups cost no host call.

/// A header map as Envoy hands it over: (name, value) pairs in order; names may repeat. Envoy
/// gives names in lower case, and the core asks for them so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    pub fn new(pairs: Vec<(String, Vec<u8>)>) -> Headers {
        Headers(pairs)
    }

    /// Every value of `name` (case-insensitive), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + Clone + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of `name`, collected.
    pub fn values(&self, name: &str) -> Vec<&[u8]> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// The first value of `name`.
    pub fn first(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.first(name).is_some()
    }

    pub fn push(&mut self, name: &str, value: &[u8]) {
        self.0.push((name.to_string(), value.to_vec()));
    }
}

/// A request's headers and the properties the core may ask for, read lazily like a response's.
pub trait Request {
    /// The first value of a request header.
    fn first(&mut self, name: &str) -> Option<Vec<u8>>;
    /// Every value of a request header, in order.
    fn all(&mut self, name: &str) -> Vec<&[u8]>;
    /// The downstream peer, `IP:port` (a property read: asked only by `source_ip`).
    fn source_address(&mut self) -> Option<String>;
    /// Whether a body follows the headers (known without a host call).
    fn has_body(&self) -> bool;
}

/// A response's headers and the properties the core may ask for. Each is a host call; the core
/// asks only for what the answer needs, and for every field of a header only once it knows the
/// header is there (most responses carry no `Set-Cookie`, and one absent header costs little).
pub trait Response {
    /// The first value of a response header (`:status` too).
    fn first(&mut self, name: &str) -> Option<Vec<u8>>;
    /// Every value of a response header, in order.
    fn all(&mut self, name: &str) -> Vec<&[u8]>;
    /// The endpoint Envoy last sent the request to, `IP:port`.
    fn upstream(&mut self) -> Option<String>;
    /// Envoy's `response.code_details`: `via_upstream`, or why Envoy answered itself.
    fn code_details(&mut self) -> Option<String>;
    /// The cluster that handled the request.
    fn cluster(&mut self) -> Option<String>;
}

/// A change to a header map, carried out in order. Names are borrowed from the configuration
/// (or are constants): the request path copies no header name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp<'a> {
    /// Replace every field of the header with one value.
    Set(&'a str, Vec<u8>),
    /// Add one more field.
    Add(&'a str, Vec<u8>),
    /// Remove every field.
    Remove(&'a str),
}

impl<'a> HeaderOp<'a> {
    pub fn set(name: &'a str, value: impl Into<Vec<u8>>) -> HeaderOp<'a> {
        HeaderOp::Set(name, value.into())
    }

    pub fn add(name: &'a str, value: impl Into<Vec<u8>>) -> HeaderOp<'a> {
        HeaderOp::Add(name, value.into())
    }

    pub fn remove(name: &'a str) -> HeaderOp<'a> {
        HeaderOp::Remove(name)
    }

    pub fn name(&self) -> &'a str {
        match self {
            HeaderOp::Set(name, _) | HeaderOp::Add(name, _) | HeaderOp::Remove(name) => name,
        }
    }
}

/// The status of a `:status` pseudo-header's value.
pub fn status(value: &[u8]) -> Option<u16> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A request path without its query or fragment.
pub fn path(full: &[u8]) -> &[u8] {
    let end = full
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(full.len());
    full.get(..end).unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        Headers::new(
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn repeated_fields_are_all_seen_in_order() {
        let h = headers(&[("cookie", "a=1"), ("x", "y"), ("cookie", "b=2")]);
        let all: Vec<&[u8]> = h.all("cookie").collect();
        assert_eq!(all, vec![&b"a=1"[..], &b"b=2"[..]]);
        assert_eq!(h.first("cookie"), Some(&b"a=1"[..]));
        assert!(!h.contains("set-cookie"));
    }

    #[test]
    fn status_and_path() {
        assert_eq!(status(b"204"), Some(204));
        assert_eq!(status(b"2x4"), None);
        assert_eq!(status(b""), None);
        assert_eq!(path(b"/app/x?y=1#z"), b"/app/x");
        assert_eq!(path(b"/a#b?c"), b"/a");
        assert_eq!(path(b"/"), b"/");
    }
}
