//! The manual page `ovn-nb-proxy(8)` and the bash completion, generated from the command line
//! definition so that they cannot drift from it: clap's own sections (synopsis, options,
//! subcommands), then the contract (tag names from the policy's defaults), the control
//! commands (the control socket's own table), signals, files and examples.

use std::io::{self, Write};
use std::path::Path;

use crate::policy::PolicyConfig;

/// Writes `ovn-nb-proxy.8` and `ovn-nb-proxy.bash` into `dir`.
pub fn write(cmd: clap::Command, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ovn-nb-proxy.8"), man_page(cmd.clone())?)?;
    let mut bash = Vec::new();
    let mut cmd = cmd;
    clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "ovn-nb-proxy", &mut bash);
    std::fs::write(dir.join("ovn-nb-proxy.bash"), bash)
}

/// The manual page, roff with a `tbl` table (hence the first line, which tells `man` so).
pub fn man_page(cmd: clap::Command) -> io::Result<Vec<u8>> {
    let man_cmd = cmd.clone();
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("OVN")
        .source(concat!("ovn-nb-proxy ", env!("CARGO_PKG_VERSION")));
    let mut out = b"'\\\" t\n".to_vec();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    out.write_all(description().as_bytes())?;
    man.render_options_section(&mut out)?;
    out.write_all(subcommands(man_cmd).as_bytes())?;
    out.write_all(contract(&PolicyConfig::default()).as_bytes())?;
    out.write_all(control_commands().as_bytes())?;
    out.write_all(TAIL.as_bytes())?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Escapes text for roff: backslashes, and a leading `.` or `'` that would read as a request.
fn esc(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

fn description() -> String {
    [
        ".PP",
        "Clients (ovn\\-nbctl, ovn\\-northd, Kube\\-OVN, Neutron, scripts) connect to the proxy as \
         they would to the OVN Northbound ovsdb\\-server. Every message passes through byte for \
         byte, except transactions on Logical_Switch_Port rows tagged as migrating: those are \
         rewritten in flight so that the port's \\fBoptions:requested\\-chassis\\fR and \
         \\fBoptions:activation\\-strategy\\fR are what OVN needs for a live migration (bound on \
         both chassis, the destination blocked until the VM's RARP). Writes made around the \
         proxy are reconciled by one elected proxy (an OVSDB lock).",
        "",
    ]
    .join("\n")
}

/// The subcommands with their arguments, on this page (clap_mangen would point at a page per
/// subcommand, which we do not ship).
fn subcommands(cmd: clap::Command) -> String {
    let mut s = String::from(".SH COMMANDS\n.PP\nWithout a command, the proxy runs. Besides:\n");
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set() && c.get_name() != "help") {
        let mut head = format!("\\fBovn\\-nb\\-proxy {}\\fR", esc(sub.get_name()));
        for a in sub.get_arguments().filter(|a| !a.is_hide_set() && a.get_id() != "help") {
            let value = a.get_value_names().and_then(|v| v.first()).map(|v| v.to_string());
            let value = value.unwrap_or_else(|| a.get_id().as_str().to_uppercase());
            match a.get_long() {
                Some(long) => head.push_str(&format!(" \\fB\\-\\-{}\\fR \\fI{}\\fR", esc(long), esc(&value))),
                None => head.push_str(&format!(" \\fI{}\\fR", esc(&value))),
            }
        }
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        s.push_str(&format!(".TP\n{head}\n{}\n", esc(&about)));
    }
    s
}

fn contract(p: &PolicyConfig) -> String {
    let mut s = String::from(
        ".SH CONTRACT\n.PP\nA CMS marks a port as migrating with tags in \
        \\fBLogical_Switch_Port.external_ids\\fR (the names can be changed in the \\fB[migration]\\fR \
        table of \\fB\\-\\-config\\fR):\n",
    );
    let tags = [
        (&p.destination_key, "chassis the VM moves to; present and non-empty: the port is migrating"),
        (&p.source_key, "chassis it moves from (optional: else the first entry of requested-chassis when the proxy first saw the destination, or with --sb-db the chassis binding the port)"),
        (&p.phase_key, "succeeded/completed: finished; failed/aborted: rolled back; anything else or absent: in progress (case-insensitive)"),
        (&p.strategy_key, "overrides the activation strategy; empty or none: no strategy (vhost-user)"),
    ];
    for (key, meaning) in tags {
        s.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", esc(key), esc(meaning)));
    }
    s.push_str(".PP\nWhat the proxy makes the options say, from the port's state after the transaction:\n");
    s.push_str(".TS\nallbox;\nlw(24n) lw(13n) lw(17n).\nstate\trequested\\-chassis\tactivation\\-strategy\n");
    let rows = [
        ("in progress", "src,dst", &*format!("{} (or the override)", p.default_strategy)),
        ("succeeded", "dst", "removed"),
        ("failed", "src", "removed"),
        ("destination tag removed while in progress", "src (abort)", "removed"),
        ("finished earlier, a write sets one chassis of its own", "the writer's", "the writer's"),
        ("no tags", "untouched", "untouched"),
    ];
    for (state, rc, strategy) in rows {
        s.push_str(&format!("T{{\n{}\nT}}\t{}\tT{{\n{}\nT}}\n", esc(state), esc(rc), esc(strategy)));
    }
    s.push_str(
        ".TE\n.PP\nOnly these two option keys are ever written; every other option and all \
        external_ids are the writer's.\n",
    );
    s
}

fn control_commands() -> String {
    let mut s = String::from(
        ".SH CONTROL COMMANDS\n.PP\nThese commands are sent with \\fBovs\\-appctl \\-t\\fR to the \
         control socket (\\fB\\-\\-unixctl\\fR, or beside the \\fB\\-\\-pidfile\\fR):\n",
    );
    for crate::control::Command { name: cmd, synopsis, help, .. } in crate::control::COMMANDS {
        let head = if synopsis.is_empty() {
            format!("\\fB{}\\fR", esc(cmd))
        } else {
            format!("\\fB{}\\fR \\fI{}\\fR", esc(cmd), esc(synopsis))
        };
        s.push_str(&format!(".TP\n{head}\n{}\n", esc(help)));
    }
    s
}

const TAIL: &str = r#".SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop accepting sessions; the open ones may finish within \fB\-\-drain\-grace\fR. A second signal exits at once.
.TP
\fBSIGHUP\fR
Re\-read the \fB\-\-config\fR file (tag names, default strategy, finalize\-on\-activation); a bad file is logged and the running config kept.
.SH FILES
.TP
\fB/etc/default/ovn\-nb\-proxy\fR
The options of the systemd unit \fBovn\-nb\-proxy.service\fR (\fBOVN_NB_PROXY_OPTS\fR).
.TP
\fB/etc/ovn/ovn\-nb\-proxy.toml\fR
The policy config the unit passes with \fB\-\-config\fR.
.TP
\fB/var/run/ovn/ovn\-nb\-proxy.pid\fR, \fB/var/run/ovn/ovn\-nb\-proxy.\fIPID\fB.ctl\fR
The pidfile and the control socket: \fBovn\-appctl \-t ovn\-nb\-proxy\fR (or \fBovs\-appctl \-t /var/run/ovn/ovn\-nb\-proxy.\fIPID\fB.ctl\fR).
.TP
\fB/var/log/ovn/ovn\-nb\-proxy.log\fR
The log; OVN's logrotate rule for /var/log/ovn/*.log rotates it and sends \fBvlog/reopen\fR.
.SH EXAMPLES
.PP
In front of a local NB database, clients connecting to the proxy's socket:
.PP
.nf
.RS
ovn\-nb\-proxy \-\-upstream unix:/var/run/ovn/ovnnb_db.sock \e
    \-\-listen punix:/var/run/ovn/ovnnb_proxy.sock \-\-pidfile /var/run/ovn/ovn\-nb\-proxy.pid
ovn\-nbctl \-\-db unix:/var/run/ovn/ovnnb_proxy.sock set Logical_Switch_Port vm1 \e
    external_ids:migration\-destination=hv2
ovn\-appctl \-t ovn\-nb\-proxy migrations/list
.RE
.fi
.SH SEE ALSO
\fBovn\-nb\fR(5), \fBovn\-nbctl\fR(8), \fBovsdb\-server\fR(1), \fBovs\-appctl\fR(8), \fBovn\-appctl\fR(8)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_roff_requests_out_of_text() {
        assert_eq!(esc(".hidden"), "\\&.hidden");
        assert_eq!(esc("a\\b-c"), "a\\eb\\-c");
    }

    #[test]
    fn the_contract_names_the_configured_tags() {
        let p = PolicyConfig { destination_key: "vm-dst".into(), ..Default::default() };
        let c = contract(&p);
        assert!(c.contains("\\fBvm\\-dst\\fR") && !c.contains("migration\\-destination"), "{c}");
        assert!(c.contains(".TS") && c.contains(".TE"));
    }

    #[test]
    fn every_control_command_is_in_the_page() {
        let s = control_commands();
        for crate::control::Command { name: cmd, .. } in crate::control::COMMANDS {
            assert!(s.contains(&format!("\\fB{}\\fR", esc(cmd))), "{cmd}");
        }
    }
}
