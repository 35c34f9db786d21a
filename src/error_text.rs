//! One-line text of an error and its whole `source()` chain: the top-level messages of the
//! HTTP and Docker clients ("client error (Connect)") say little without their causes.

pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
