//! The gcfg (git-config style) INI syntax used by the in-tree Kamatera provider's cloud config.
//!
//! This is a syntax layer only: it turns text into sections and `key = value` entries, each with
//! its line number, and knows nothing about which keys exist. The rules follow `gopkg.in/gcfg.v1`:
//! - section and key names are case-insensitive (returned lowercased); subsection names
//!   (`[nodegroup "name"]`) are case-sensitive, quoted, with `\"` and `\\` escapes;
//! - `;` and `#` start a comment outside quotes;
//! - values may be quoted (whitespace inside quotes is kept); `\"` and `\\` escapes work inside
//!   and outside quotes; a `\` at the end of a line continues the value on the next line (LF or
//!   CRLF). gcfg's `\n`, `\t` and `\b` are refused, with the line: they make control
//!   characters, which no key of this config takes (the in-tree provider's keys never need them);
//! - leading and trailing unquoted whitespace of a value is dropped;
//! - a key without `=` is a "blank" value (`true` for booleans, "empty the list" for lists).

use std::fmt;

/// One `[section]` or `[section "subsection"]` header and the entries under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Lowercased section name.
    pub name: String,
    /// The quoted subsection name, case kept.
    pub subsection: Option<String>,
    /// 1-based line of the header.
    pub line: usize,
    pub entries: Vec<Entry>,
}

/// One `key = value` (or bare `key`) line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Lowercased key name.
    pub key: String,
    /// `None` for a bare key without `=`.
    pub value: Option<String>,
    /// 1-based line where the key starts.
    pub line: usize,
}

/// A syntax error with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses a whole document. Every syntax error is collected (parsing resumes on the next line), so
/// the caller can report all of them at once.
pub fn parse(text: &str) -> (Vec<Section>, Vec<SyntaxError>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parser = Parser {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
        sections: Vec::new(),
        errors: Vec::new(),
    };
    parser.run();
    (parser.sections, parser.errors)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    sections: Vec<Section>,
    errors: Vec<SyntaxError>,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\r')) {
            self.bump();
        }
    }

    /// True at the end of a line: newline, comment or end of input (after blanks).
    fn at_line_end(&mut self) -> bool {
        self.skip_blanks();
        matches!(self.peek(), None | Some('\n' | ';' | '#'))
    }

    /// Skips the rest of the current line, including its newline.
    fn skip_line(&mut self) {
        while let Some(c) = self.bump() {
            if c == '\n' {
                break;
            }
        }
    }

    fn error(&mut self, line: usize, message: impl Into<String>) {
        self.errors.push(SyntaxError {
            line,
            message: message.into(),
        });
    }

    fn run(&mut self) {
        while self.peek().is_some() {
            let line = self.line;
            self.skip_blanks();
            match self.peek() {
                None => break,
                Some('\n' | ';' | '#') => self.skip_line(),
                Some(c) => {
                    let result = if c == '[' {
                        self.section_header()
                    } else {
                        self.entry()
                    };
                    if let Err(msg) = result {
                        self.error(line, msg);
                        // Resume at the next physical line.
                        if self.line == line {
                            self.skip_line();
                        }
                    }
                }
            }
        }
    }

    fn section_header(&mut self) -> Result<(), String> {
        let line = self.line;
        self.bump(); // '['
        self.skip_blanks();
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                name.push(c.to_ascii_lowercase());
                self.bump();
            } else {
                break;
            }
        }
        if name.is_empty() {
            return Err("section header has no name".into());
        }
        self.skip_blanks();
        let subsection = if self.peek() == Some('"') {
            self.bump();
            let mut sub = String::new();
            loop {
                if self.peek() == Some('\n') {
                    return Err("unterminated subsection name".into());
                }
                match self.bump() {
                    Some('"') => break,
                    Some('\\') => match self.bump() {
                        Some(c @ ('"' | '\\')) => sub.push(c),
                        Some(c) if c != '\n' => {
                            return Err(format!(
                                "invalid escape \\{c} in subsection name (only \\\" and \\\\ are allowed)"
                            ));
                        }
                        _ => return Err("unterminated subsection name".into()),
                    },
                    Some('\n') | None => return Err("unterminated subsection name".into()),
                    Some(c) => sub.push(c),
                }
            }
            self.skip_blanks();
            Some(sub)
        } else {
            None
        };
        if self.peek() != Some(']') {
            return Err(format!("section header [{name}: expected ']'"));
        }
        self.bump();
        if !self.at_line_end() {
            return Err("unexpected text after section header".into());
        }
        self.skip_line();
        self.sections.push(Section {
            name,
            subsection,
            line,
            entries: Vec::new(),
        });
        Ok(())
    }

    fn entry(&mut self) -> Result<(), String> {
        let line = self.line;
        let mut key = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '-' {
                key.push(c.to_ascii_lowercase());
                self.bump();
            } else {
                break;
            }
        }
        if key.is_empty() || !key.starts_with(|c: char| c.is_ascii_alphabetic()) {
            // Name the character and its column, never the rest of the line: it may be the
            // value of a secret.
            let at = self.pos - key.chars().count();
            let line_start = self.chars[..at]
                .iter()
                .rposition(|c| *c == '\n')
                .map_or(0, |i| i + 1);
            let column = at - line_start + 1;
            return Err(match self.chars.get(at) {
                Some(c) => format!(
                    "expected a key name (a letter followed by letters, digits or '-'), found {c:?} (U+{:04X}) at column {column}",
                    u32::from(*c)
                ),
                None => "expected a key name (a letter followed by letters, digits or '-')".into(),
            });
        }
        let value = if self.at_line_end() {
            self.skip_line();
            None
        } else if self.peek() == Some('=') {
            self.bump();
            Some(self.value()?)
        } else {
            return Err(format!("expected '=' after key {key:?}"));
        };
        let Some(section) = self.sections.last_mut() else {
            return Err(format!(
                "key {key:?} appears before any section header such as [global]"
            ));
        };
        section.entries.push(Entry { key, value, line });
        Ok(())
    }

    /// Reads a value after `=`, up to the end of its (possibly continued) line.
    fn value(&mut self) -> Result<String, String> {
        self.skip_blanks();
        let mut out = String::new();
        // Length of `out` that must survive trailing-whitespace trimming (quoted or escaped text).
        let mut keep = 0;
        let mut quoted = false;
        loop {
            match self.peek() {
                None => {
                    if quoted {
                        return Err("unterminated quoted value".into());
                    }
                    break;
                }
                Some('\n') => {
                    if quoted {
                        return Err("unterminated quoted value (quotes cannot span lines)".into());
                    }
                    self.bump();
                    break;
                }
                Some('\r') if self.peek_at(1) == Some('\n') && !quoted => {
                    self.bump();
                    self.bump();
                    break;
                }
                Some(';' | '#') if !quoted => {
                    self.skip_line();
                    break;
                }
                Some('"') => {
                    self.bump();
                    quoted = !quoted;
                    keep = out.len();
                }
                Some('\\') => {
                    self.bump();
                    match self.bump() {
                        // gcfg's \n, \t and \b make control characters, which no key of
                        // this config takes (an image printed across two lines, a name
                        // with a tab): refused with the line, like NUL.
                        Some(c @ ('n' | 't' | 'b')) => {
                            return Err(format!(
                                "escape sequence \\{c} would put a control character in the value; no key takes one"
                            ));
                        }
                        Some('"') => out.push('"'),
                        Some('\\') => out.push('\\'),
                        Some('\n') if !quoted => {}
                        Some('\r') if !quoted && self.peek() == Some('\n') => {
                            self.bump();
                        }
                        Some(c) if c != '\n' && c != '\r' => {
                            return Err(format!(
                                "invalid escape sequence \\{c} (allowed: \\\" \\\\ and \\ at line end)"
                            ));
                        }
                        _ => return Err("line continuation inside quotes".into()),
                    }
                    keep = out.len();
                }
                Some(c) if c.is_control() && c != '\t' => {
                    // NUL and the like are never meant, and break what reads the value later.
                    let line_start = self.chars[..self.pos]
                        .iter()
                        .rposition(|c| *c == '\n')
                        .map_or(0, |i| i + 1);
                    return Err(format!(
                        "control character U+{:04X} in the value at column {}",
                        u32::from(c),
                        self.pos - line_start + 1
                    ));
                }
                Some(c) => {
                    self.bump();
                    out.push(c);
                    if quoted {
                        keep = out.len();
                    }
                }
            }
        }
        let trimmed_len = keep.max(out.trim_end().len());
        out.truncate(trimmed_len);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Vec<Section> {
        let (sections, errors) = parse(text);
        assert!(errors.is_empty(), "unexpected errors: {errors:?}");
        sections
    }

    fn value_of(text: &str) -> Option<String> {
        one(text)[0].entries[0].value.clone()
    }

    #[test]
    fn sections_keys_and_case() {
        let s = one("[Global]\nCluster-Name = a\n[NodeGroup \"Workers\"]\nMin-Size=1\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "global");
        assert_eq!(s[0].subsection, None);
        assert_eq!(s[0].entries[0].key, "cluster-name");
        assert_eq!(s[1].name, "nodegroup");
        assert_eq!(s[1].subsection.as_deref(), Some("Workers"));
        assert_eq!(s[1].line, 3);
        assert_eq!(s[1].entries[0].line, 4);
    }

    #[test]
    fn comments_and_quotes() {
        assert_eq!(value_of("[a]\nk = v ; comment\n").as_deref(), Some("v"));
        assert_eq!(value_of("[a]\nk = v # comment\n").as_deref(), Some("v"));
        assert_eq!(value_of("[a]\nk = \"v;#x\" \n").as_deref(), Some("v;#x"));
        assert_eq!(
            value_of("[a]\nk = \"  padded  \"\n").as_deref(),
            Some("  padded  ")
        );
        assert_eq!(value_of("[a]\nk = a  b\n").as_deref(), Some("a  b"));
        assert_eq!(value_of("[a]\nk =\n").as_deref(), Some(""));
        assert_eq!(value_of("[a]\nk\n"), None);
    }

    #[test]
    fn escapes() {
        assert_eq!(
            value_of(
                r#"[a]
k = "x\"q\\"
"#
            )
            .as_deref(),
            Some("x\"q\\")
        );
        // Escapes that make control characters: refused with the line, quoted or not.
        for text in [
            "[a]\nk = ubu\\nntu\n",
            "[a]\nk = \"ubu\\tntu\"\n",
            "[a]\nk = a\\bb\n",
        ] {
            let (_, errors) = parse(text);
            assert_eq!(errors.len(), 1, "{text}");
            assert_eq!(errors[0].line, 2);
            assert!(
                errors[0].message.contains("would put a control character"),
                "{}",
                errors[0].message
            );
        }
        let (_, errors) = parse("[a]\nk = \"\\q\"\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 2);
        assert!(errors[0].message.contains("invalid escape sequence \\q"));
    }

    #[test]
    fn continuation_lf_and_crlf() {
        let lf = "[a]\nk = ssh-rsa \\\n AAAA \\\nBBBB\nother = 1\n";
        let crlf = lf.replace('\n', "\r\n");
        for text in [lf.to_string(), crlf] {
            let s = one(&text);
            assert_eq!(s[0].entries[0].value.as_deref(), Some("ssh-rsa  AAAA BBBB"));
            assert_eq!(s[0].entries[1].key, "other");
            assert_eq!(s[0].entries[1].line, 5);
        }
    }

    #[test]
    fn syntax_errors_are_all_reported_with_lines() {
        let (sections, errors) =
            parse("k = 1\n[a\n[b]\n = x\n[c \"unterminated]\n[d]\nkey = \"open\nok = 1\n");
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 2, 4, 5, 7], "{errors:?}");
        assert!(errors[0].message.contains("before any section"));
        // Parsing went on after every error.
        let d = sections.iter().find(|s| s.name == "d").expect("section d");
        assert_eq!(d.entries.len(), 1);
        assert_eq!(d.entries[0].key, "ok");
    }

    #[test]
    fn subsection_escapes() {
        let s = one("[nodegroup \"a\\\"b\"]\n");
        assert_eq!(s[0].subsection.as_deref(), Some("a\"b"));
    }
}
