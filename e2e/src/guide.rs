//! docs/guide.md as a test reads it: the guide marks each block a test runs with `<!-- test: name -->` on
//! the line before the block, and e2e/tests/guide.rs runs the block's text as it stands. A guide edit is a
//! test edit; a command the test needs but the guide lacks is a failure, not a silent drift.

use crate::error::{Error, Result};

/// The guide, as the test binary was built with it.
pub const GUIDE: &str = include_str!("../../docs/guide.md");

/// The text of the fenced block marked `<!-- test: name -->` (the marker on the line before the fence).
/// Exactly one block may carry a name.
pub fn block(markdown: &str, name: &str) -> Result<String> {
    let marker = format!("<!-- test: {name} -->");
    let mut found = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if line.trim() != marker {
            continue;
        }
        let fence = lines.next().unwrap_or_default();
        if !fence.trim_start().starts_with("```") {
            return Err(Error::Usage(format!("docs/guide.md: {marker} is not followed by a ``` block")));
        }
        let body: Vec<&str> = lines.by_ref().take_while(|l| !l.trim_start().starts_with("```")).collect();
        found.push(body.join("\n") + "\n");
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::Usage(format!("docs/guide.md has no block marked {marker}"))),
        n => Err(Error::Usage(format!("docs/guide.md has {n} blocks marked {marker}; a name marks one"))),
    }
}

/// A shell block's commands as words, continuation lines joined and comments left out: what the shell
/// would run, for comparing a command with another.
pub fn commands(block: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.split(" #").next().unwrap_or_default();
        let line = if line.trim_start().starts_with('#') { "" } else { line };
        if let Some(cont) = line.trim_end().strip_suffix('\\') {
            current.push_str(cont);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let words: Vec<String> = current.split_whitespace().map(String::from).collect();
        if !words.is_empty() {
            out.push(words);
        }
        current.clear();
    }
    out
}

/// The value of `--flag value` or `--flag=value` in a command's words.
pub fn flag_value<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    let eq = format!("{flag}=");
    words
        .iter()
        .enumerate()
        .find_map(|(i, w)| if w == flag { words.get(i + 1).map(String::as_str) } else { w.strip_prefix(&eq) })
}

/// Replaces the value of `--flag` (either form) in a command's words; an error if the flag is not there.
pub fn set_flag(words: &mut [String], flag: &str, value: &str) -> Result<()> {
    let eq = format!("{flag}=");
    for i in 0..words.len() {
        if words[i] == flag && i + 1 < words.len() {
            words[i + 1] = value.to_string();
            return Ok(());
        }
        if words[i].starts_with(&eq) {
            words[i] = format!("{eq}{value}");
            return Ok(());
        }
    }
    Err(Error::Usage(format!("the command `{}` has no {flag}", words.join(" "))))
}

/// The `kubeadm join` commands `kubeadm init` printed (the control-plane one first, then the worker's), as
/// words.
pub fn printed_joins(init_output: &str) -> Vec<Vec<String>> {
    let mut joins = Vec::new();
    let mut lines = init_output.lines();
    while let Some(line) = lines.next() {
        if !line.trim_start().starts_with("kubeadm join ") {
            continue;
        }
        let mut text = String::from(line);
        while text.trim_end().ends_with('\\') {
            let Some(next) = lines.next() else { break };
            text.push('\n');
            text.push_str(next);
        }
        joins.extend(commands(&text));
    }
    joins
}

/// Quotes words for a shell command line (every word here is a flag, an address or a token: plain words;
/// anything else is quoted).
pub fn shell_line(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@".contains(c)) {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str =
        "# t\n<!-- test: init -->\n```sh\n# a comment\nkubeadm init --a 1 \\\n  --b=2   # why\n```\ntext\n";

    #[test]
    fn a_marked_block_is_found_and_its_commands_joined() {
        let b = block(DOC, "init").unwrap();
        assert_eq!(b, "# a comment\nkubeadm init --a 1 \\\n  --b=2   # why\n");
        let words = &commands(&b)[0];
        assert_eq!(words.join(" "), "kubeadm init --a 1 --b=2");
        assert_eq!(flag_value(words, "--a"), Some("1"));
        assert_eq!(flag_value(words, "--b"), Some("2"));
        assert_eq!(flag_value(words, "--c"), None);
    }

    #[test]
    fn a_missing_or_doubled_marker_is_an_error_naming_it() {
        let missing = block(DOC, "join").unwrap_err().to_string();
        assert!(missing.contains("<!-- test: join -->"), "{missing}");
        let doubled = format!("{DOC}{DOC}");
        assert!(block(&doubled, "init").unwrap_err().to_string().contains("2 blocks"));
        assert!(block("<!-- test: x -->\ntext\n", "x").unwrap_err().to_string().contains("not followed"));
    }

    #[test]
    fn the_join_commands_init_printed_are_read_whole() {
        let printed = "You can now join any number of control-plane nodes:\n\n  kubeadm join 198.51.100.10:6443 --token abc.def \\\n\t--discovery-token-ca-cert-hash sha256:00ff \\\n\t--control-plane --certificate-key 1234\n\nThen workers:\n\nkubeadm join 198.51.100.10:6443 --token abc.def \\\n\t--discovery-token-ca-cert-hash sha256:00ff \n";
        let joins = printed_joins(printed);
        assert_eq!(joins.len(), 2);
        assert_eq!(flag_value(&joins[0], "--certificate-key"), Some("1234"));
        assert!(joins[0].contains(&"--control-plane".to_string()));
        assert_eq!(flag_value(&joins[1], "--token"), Some("abc.def"));
        assert!(!joins[1].contains(&"--control-plane".to_string()));
    }

    #[test]
    fn flags_are_replaced_in_either_form_and_lines_quoted() {
        let mut words: Vec<String> = ["kubeadm", "join", "--token", "<token>", "--x=<y>"].map(String::from).to_vec();
        set_flag(&mut words, "--token", "abc.def").unwrap();
        set_flag(&mut words, "--x", "z").unwrap();
        assert!(set_flag(&mut words, "--nope", "1").unwrap_err().to_string().contains("--nope"));
        assert_eq!(shell_line(&words), "kubeadm join --token abc.def --x=z");
        assert_eq!(shell_line(&["a b".to_string()]), "'a b'");
    }
}
