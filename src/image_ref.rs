//! Image references, checked against Docker's grammar before they reach Docker:
//! `[domain[:port]/]path[:tag][@algorithm:hex]`, path components lowercase.

/// `image` split as Docker splits a reference: the name (`[domain[:port]/]path`), the tag
/// that follows the last ':' after the last '/', and the digest after '@'. Not checked:
/// see [`validate`].
pub fn split(image: &str) -> (&str, Option<&str>, Option<&str>) {
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    // A tag follows the last ':' that comes after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[last_slash..].rfind(':') {
        Some(i) => (
            &rest[..last_slash + i],
            Some(&rest[last_slash + i + 1..]),
            digest,
        ),
        None => (rest, None, digest),
    }
}

/// `image` as Docker names it in its listings: the tag `latest` when none is given, a
/// digest reference without its tag, and Docker Hub's domain (and its `library/`) left out.
/// Two references of one image name are equal once canonical.
pub fn canonical(image: &str) -> String {
    let (name, tag, digest) = split(image);
    let name = name
        .strip_prefix("docker.io/")
        .or_else(|| name.strip_prefix("index.docker.io/"))
        .map(|hub| hub.strip_prefix("library/").unwrap_or(hub))
        .unwrap_or(name);
    match (tag, digest) {
        (_, Some(digest)) => format!("{name}@{digest}"),
        (Some(tag), None) => format!("{name}:{tag}"),
        (None, None) => format!("{name}:latest"),
    }
}

/// Checks `image`; on error says what is wrong with it.
pub fn validate(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("it is empty".into());
    }
    let (name, tag, digest) = split(image);
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    if name.len() > 255 {
        return Err("the name is longer than 255 characters".into());
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let first = components[0];
    let has_domain = components.len() > 1
        && (first.contains('.')
            || first.contains(':')
            || first == "localhost"
            || first.chars().any(|c| c.is_ascii_uppercase()));
    if has_domain {
        check_domain(first)?;
        components.remove(0);
    }
    for component in components {
        check_path_component(component)?;
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
            return Err(format!("registry port {port:?} is not a number"));
        }
    }
    let ok = !host.is_empty()
        && host.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("registry host {host:?} is not a host name"))
    }
}

fn check_path_component(component: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "path component {component:?} must be lowercase letters and digits, \
             separated by '.', '_', '__' or '-'"
        ))
    };
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return bad();
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__' or a run of '-'.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return bad();
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("tag {tag:?} is not a valid tag"))
    }
}

fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!(
            "digest {digest:?} lacks its algorithm (e.g. sha256:…)"
        ));
    };
    let algorithm_ok = algorithm.split(['+', '.', '-', '_']).all(|c| {
        c.starts_with(|ch: char| ch.is_ascii_alphabetic())
            && c.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("digest {digest:?} is not a valid digest"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{canonical, split, validate};

    #[test]
    fn references_split_at_the_tag_after_the_last_slash() {
        assert_eq!(split("echo"), ("echo", None, None));
        assert_eq!(
            split("mecanywhere-executor-sandbox:0123"),
            ("mecanywhere-executor-sandbox", Some("0123"), None)
        );
        // A registry's port is no tag (the holder image's import split it there before).
        assert_eq!(
            split("localhost:5000/holder"),
            ("localhost:5000/holder", None, None)
        );
        assert_eq!(
            split("localhost:5000/a/holder:v1@sha256:abc"),
            ("localhost:5000/a/holder", Some("v1"), Some("sha256:abc"))
        );
    }

    #[test]
    fn valid_references() {
        for ok in [
            "echo",
            "meca-echo:latest",
            "hugy718/goserver:v2",
            "mecanywhere-python-task:1227",
            "127.0.0.1:5000/meca/echo-pull:v1",
            "localhost/a/b",
            "registry.example.com/a_b/c__d/e--f.g",
            "Registry.Example.com:5000/x:TAG_1.0-rc",
            "a@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "r:5000/a/b:v1@sha256:0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn invalid_references() {
        for bad in [
            "",
            "a b",
            "Upper",
            "/a",
            "a//b",
            "a:",
            "a:-tag",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "a/b:c:d",
            "a@sha256:short",
            "a@nohex",
            "host:port/a",
            "a\nb",
            "a;rm -rf",
            "../../etc",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn canonical_names_are_dockers() {
        assert_eq!(canonical("meca-echo"), "meca-echo:latest");
        assert_eq!(canonical("docker.io/library/python:3"), "python:3");
        assert_eq!(canonical("docker.io/sbip/task"), "sbip/task:latest");
        assert_eq!(canonical("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(canonical("127.0.0.1:5000/x:v1"), "127.0.0.1:5000/x:v1");
        assert_eq!(canonical("x:v1@sha256:ab"), "x@sha256:ab");
    }
}
