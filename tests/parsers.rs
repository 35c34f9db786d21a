//! Property tests of the parsers that face untrusted input: the execute and update-config
//! request bodies, image references and the YAML config. A fixed number of generated cases
//! per property (set below), so the run time is bounded.

use mecanywhere_executor::api::request::{parse_execute, parse_update, RequestError};
use mecanywhere_executor::config::Config;
use mecanywhere_executor::image_ref;
use proptest::prelude::*;
use std::path::Path;

const CASES: u32 = 2000;

fn image() -> impl Strategy<Value = String> {
    (
        proptest::option::of("[a-z0-9]{1,10}(\\.[a-z]{2,5})?(:[0-9]{2,5})?"),
        proptest::collection::vec("[a-z0-9]{1,8}([._-][a-z0-9]{1,8})?", 1..4),
        proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
    )
        .prop_map(|(domain, path, tag)| {
            let mut s = String::new();
            if let Some(d) = domain {
                // A first component is a registry only when it looks like one.
                if d.contains('.') || d.contains(':') {
                    s.push_str(&d);
                    s.push('/');
                }
            }
            s.push_str(&path.join("/"));
            if let Some(t) = tag {
                s.push(':');
                s.push_str(&t);
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn execute_parser_never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_execute(&body);
    }

    #[test]
    fn execute_parser_never_panics_on_json_like_text(body in "\\{(\"[a-z_]{1,9}\": ?(-?[0-9.e]{1,8}|\"[^\"]{0,12}\"|true|null|\\{[^}]{0,20}\\}),? ?){0,6}\\}") {
        let _ = parse_execute(body.as_bytes());
    }

    #[test]
    fn valid_requests_parse_to_what_was_sent(
        image in image(),
        cpu_tenths in 1u32..640,
        mem in 1i64..1_000_000,
        input in any::<String>(),
        sgx in any::<bool>(),
        microvm in any::<bool>(),
    ) {
        let cpu = f64::from(cpu_tenths) / 10.0;
        let mut body = serde_json::json!({
            "id": image, "resource": {"cpu": cpu, "mem": mem}, "input": input, "use_sgx": sgx,
        });
        if microvm {
            body["runtime"] = "microVM".into();
        }
        let request = parse_execute(body.to_string().as_bytes()).unwrap();
        prop_assert_eq!(&request.key.image, &image);
        prop_assert_eq!(request.key.demand.milli_cpu, u64::from(cpu_tenths) * 100);
        prop_assert_eq!(request.key.demand.mem_mb, mem as u64);
        prop_assert_eq!(request.key.use_sgx, sgx);
        prop_assert_eq!(&request.input[..], input.as_bytes(), "input passed unchanged");
    }

    #[test]
    fn non_positive_resources_are_refused(cpu in -100.0f64..=0.0, mem in -100i64..=0) {
        // Both zero means "defaults"; any other non-positive value is invalid.
        prop_assume!(!(cpu == 0.0 && mem == 0));
        let body = serde_json::json!({"id": "a", "resource": {"cpu": cpu, "mem": mem}});
        let refused = matches!(parse_execute(body.to_string().as_bytes()), Err(RequestError::InvalidResource(_)));
        prop_assert!(refused);
    }

    #[test]
    fn generated_image_references_are_accepted(image in image()) {
        prop_assert_eq!(image_ref::validate(&image), Ok(()));
    }

    #[test]
    fn image_references_with_whitespace_or_controls_are_refused(
        head in "[a-z]{1,5}", bad in "[ \\t\\n\\r\\x00;|&$]", tail in "[a-z]{0,5}",
    ) {
        let image = format!("{head}{bad}{tail}");
        prop_assert!(image_ref::validate(&image).is_err(), "accepted {:?}", image);
    }

    #[test]
    fn image_reference_checker_never_panics(image in any::<String>()) {
        let _ = image_ref::validate(&image);
    }

    #[test]
    fn update_parser_never_panics(body in any::<String>()) {
        let _ = parse_update(body.as_bytes());
    }

    #[test]
    fn config_parser_never_panics(text in any::<String>()) {
        let _ = Config::from_yaml(&text, Path::new("fuzz.yaml"));
    }

    #[test]
    fn config_parser_never_panics_on_yaml_like_text(
        text in "(([a-zA-Z_]{1,16}): ?([-0-9.]{1,6}|\"[a-z0-9 ]{0,8}\"|true|false|[0-9]{1,3}[smh])\n){0,8}",
    ) {
        let _ = Config::from_yaml(&text, Path::new("fuzz.yaml"));
    }

    #[test]
    fn valid_configs_parse_to_their_values(
        cpu_tenths in 1u32..1000, mem in 1i64..1_000_000, minutes in 1i64..10_000, idle_s in 1u64..100_000,
    ) {
        let text = format!("cpu: {}\nmem: {mem}\ntimeout: {minutes}\nqueue_timeout: {idle_s}s\n", f64::from(cpu_tenths) / 10.0);
        let config = Config::from_yaml(&text, Path::new("c.yaml")).unwrap();
        prop_assert_eq!(config.cpu, f64::from(cpu_tenths) / 10.0);
        prop_assert_eq!(config.mem_mb, mem as u64);
        prop_assert_eq!(config.idle_timeout.as_secs(), minutes as u64 * 60);
        prop_assert_eq!(config.queue_timeout.as_secs(), idle_s);
    }
}
