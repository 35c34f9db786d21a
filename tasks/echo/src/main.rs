//! `echo-task`: the MECAnywhere echo task.
//!
//! Listens on 0.0.0.0:8080, prints `meca-init-done` once ready, and answers
//! `POST /` with the request body (`Content-Type: application/json`).
//! Anything else is a 404.

mod http;

fn main() {
    http::exit_on_term_signals();
    let listener = http::bind();
    http::print_ready();
    http::serve(listener, |req, conn| {
        if req.method == "POST" && req.path == "/" {
            conn.respond(200, "application/json", &req.body)
        } else {
            conn.respond(404, "text/plain", b"not found\n")
        }
    })
}
