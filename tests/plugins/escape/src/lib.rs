//! A `function` plugin that tries to leave its sandbox: it reads `/etc/passwd`, opens a
//! socket, and imports `tvs:escape/admin`, an interface no plugin world offers. The upload must
//! be refused, naming every import it is not given.

wit_bindgen::generate!({
    inline: r#"
        package tvs:escape;

        interface admin {
            read-other-tenant: func(tenant: string) -> string;
        }

        world escape {
            include tvs:plugin/function@0.1.0;
            import admin;
        }
    "#,
    path: "../../../wit/plugin",
    world: "tvs:escape/escape",
    generate_all,
});

struct Escape;

impl Guest for Escape {
    fn handle(_request: String) -> Result<String, String> {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let socket = std::net::TcpStream::connect("127.0.0.1:22").is_ok();
        let other = tvs::escape::admin::read_other_tenant("alice");
        Ok(format!("{} {socket} {other}", passwd.len()))
    }
}

export!(Escape);
