//! Isolation choices against the real Docker daemon: the micro-VM runtime (gVisor, registered
//! with Docker as `runsc` by scripts/test.sh) and SGX (device and AESM directory mapped in).

mod common;

use common::*;
use serde_json::json;

const KERNEL: &str = "meca-test-kernel:latest";
const SGX: &str = "meca-test-sgx:latest";

fn docker_has_runsc() -> bool {
    docker(&["info", "--format", "{{json .Runtimes}}"]).contains("runsc")
}

#[test]
fn micro_vm_requests_run_under_the_configured_sandbox_and_others_under_runc() {
    assert!(
        docker_has_runsc(),
        "gVisor is not registered with Docker as runsc (scripts/test.sh registers it)"
    );
    let ex = Executor::start("gvisor", "microVM_runtime: runsc\n");
    let stats = ex.get("/stats").body;
    assert_eq!(
        stats["runtimes"],
        json!(["container", "microVM"]),
        "{stats}"
    );

    let reply = ex.execute(&json!({"id": KERNEL, "runtime": "microVM", "input": "x"}));
    assert!(reply.success(), "{reply:?}");
    assert!(
        reply.msg().contains("Starting gVisor"),
        "the task saw gVisor's kernel: {}",
        reply.msg()
    );
    let reply = ex.execute(&json!({"id": KERNEL, "input": "x"}));
    assert!(reply.success(), "{reply:?}");
    assert!(
        !reply.msg().contains("gVisor"),
        "a default request runs under runc: {}",
        reply.msg()
    );

    let ids = ex.containers();
    assert_eq!(ids.len(), 2, "runtime is part of the task key");
    let mut runtimes: Vec<String> = ids
        .iter()
        .map(|id| inspect(id, "{{.HostConfig.Runtime}}"))
        .collect();
    runtimes.sort();
    assert_eq!(runtimes, ["runc", "runsc"]);
}

#[test]
fn a_micro_vm_runtime_changed_to_an_unregistered_name_is_refused_not_downgraded() {
    let ex = Executor::start("gvisor-update", "microVM_runtime: runsc\n");
    assert!(ex.post("/pause", "").success());
    let reply = ex.post("/update-config", "{\"microVM_runtime\": \"kata-missing\"}");
    assert!(reply.success(), "{reply:?}");
    assert!(ex.post("/unpause", "").success());
    let stats = ex.get("/stats").body;
    assert_eq!(stats["runtimes"], json!(["container"]), "{stats}");
    let reply = ex.execute(&json!({"id": KERNEL, "runtime": "microVM", "input": "x"}));
    assert!(!reply.success());
    assert!(reply.msg().contains("kata-missing"), "{}", reply.msg());
    assert!(ex.containers().is_empty());
}

#[test]
fn sgx_tasks_get_the_device_and_aesm_directory_and_their_two_routes() {
    let aesmd = tempfile::tempdir().unwrap();
    let yaml = format!(
        "sgx:\n  enable: true\n  sgx_device: /dev/zero\n  aesmd_path: {}\n",
        aesmd.path().display()
    );
    let ex = Executor::start("sgx", &yaml);
    // Remote attestation: input exactly SGXRAREQUEST → GET /ra.
    let reply = ex.execute(&json!({"id": SGX, "resource": {"cpu": 1, "mem": 128}, "input": "SGXRAREQUEST", "use_sgx": true}));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "{\"report\":\"mock-ra-report\"}");
    // Anything else → POST /run, inside a container that has the device and the directory.
    let input = "{\"value\": \"encrypted\"}";
    let reply = ex.execute(
        &json!({"id": SGX, "resource": {"cpu": 1, "mem": 128}, "input": input, "use_sgx": true}),
    );
    assert!(reply.success(), "{reply:?}");
    let answer: serde_json::Value = serde_json::from_str(reply.msg()).unwrap();
    assert_eq!(
        answer,
        json!({"input": input, "enclave": true, "aesmd": true})
    );
    let ids = ex.containers();
    assert_eq!(ids.len(), 1);
    let devices = inspect(&ids[0], "{{json .HostConfig.Devices}}");
    assert!(
        devices.contains("/dev/sgx/enclave") && devices.contains("rwm"),
        "{devices}"
    );
    let binds = inspect(&ids[0], "{{json .HostConfig.Binds}}");
    assert!(binds.contains(":/var/run/aesmd"), "{binds}");

    // use_sgx is part of the key: the same image without SGX is another container, and
    // gets neither the device nor the SGX routes.
    let reply = ex.execute(&json!({"id": SGX, "resource": {"cpu": 1, "mem": 128}, "input": input}));
    assert!(
        !reply.success(),
        "POST / on an SGX task is a 404: {reply:?}"
    );
    assert!(reply.msg().contains("404"), "{}", reply.msg());
    assert_eq!(ex.containers().len(), 2);
}

#[test]
fn sgx_fails_clearly_when_disabled_or_the_device_is_missing() {
    let ex = Executor::start("sgx-off", "");
    let reply = ex.execute(&json!({"id": SGX, "input": "SGXRAREQUEST", "use_sgx": true}));
    assert!(!reply.success());
    assert!(
        reply.msg().contains("SGX is not enabled"),
        "{}",
        reply.msg()
    );
    drop(ex);

    let aesmd = tempfile::tempdir().unwrap();
    let yaml = format!(
        "sgx:\n  enable: true\n  sgx_device: /dev/no-such-sgx-device\n  aesmd_path: {}\n",
        aesmd.path().display()
    );
    let ex = Executor::start("sgx-nodev", &yaml);
    let reply = ex.execute(&json!({"id": SGX, "input": "SGXRAREQUEST", "use_sgx": true}));
    assert!(!reply.success());
    assert!(
        reply.msg().contains("/dev/no-such-sgx-device"),
        "{}",
        reply.msg()
    );
    assert!(ex.containers().is_empty());
}
