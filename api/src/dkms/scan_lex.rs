//! A small bash word splitter for [`super::scan_declared`].
//!
//! It splits text into statements (at newlines and `;`) of words, each word a list of
//! literal and expansion segments, following bash's quoting: `'…'` is literal, `"…"`
//! allows `$…` and backticks and the escapes `\$ \` \" \\ \<newline>`, an unquoted `\`
//! escapes the next character, `#` at the start of a word starts a comment. Control
//! operators (`&&`, `||`, `|`, `&`, `(`, `)`, `<`, `>`) are not parsed, only noticed.

use std::iter::Peekable;
use std::str::Chars;

/// A piece of a word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    /// Literal text; `quoted` if it came from inside quotes.
    Lit { text: String, quoted: bool },
    /// An expansion as written: `$X`, `${…}`, `$(…)`, `` `…` ``.
    Expand(String),
}

/// A shell word: its segments in order.
pub(crate) type Word = Vec<Seg>;

/// The lexer's result.
#[derive(Debug, Default)]
pub(crate) struct Lexed {
    /// Non-empty statements, each a list of words.
    pub(crate) statements: Vec<Vec<Word>>,
    /// Whether any control operator was seen.
    pub(crate) control: bool,
}

/// Splits `text` into statements and words.
pub(crate) fn lex(text: &str) -> Lexed {
    let mut lx = Lexer {
        chars: text.chars().peekable(),
        out: Lexed::default(),
        statement: Vec::new(),
        word: None,
    };
    while let Some(c) = lx.chars.next() {
        lx.step(c);
    }
    lx.end_statement();
    lx.out
}

struct Lexer<'a> {
    chars: Peekable<Chars<'a>>,
    out: Lexed,
    statement: Vec<Word>,
    /// The word being read; None between words.
    word: Option<Word>,
}

impl Lexer<'_> {
    fn step(&mut self, c: char) {
        match c {
            ' ' | '\t' | '\r' => self.end_word(),
            '\n' | ';' => self.end_statement(),
            '&' | '|' | '(' | ')' | '<' | '>' => {
                self.out.control = true;
                self.end_statement();
            }
            '#' if self.word.is_none() => self.skip_comment(),
            '\\' => self.unquoted_escape(),
            '\'' => self.single_quoted(),
            '"' => self.double_quoted(),
            '$' => self.dollar(false),
            '`' => self.backtick(),
            c => self.push_lit(c, false),
        }
    }

    fn end_word(&mut self) {
        if let Some(word) = self.word.take() {
            self.statement.push(word);
        }
    }

    fn end_statement(&mut self) {
        self.end_word();
        if !self.statement.is_empty() {
            self.out
                .statements
                .push(std::mem::take(&mut self.statement));
        }
    }

    fn word(&mut self) -> &mut Word {
        self.word.get_or_insert_with(Vec::new)
    }

    /// Appends a literal character, merging with the previous literal of the same kind.
    fn push_lit(&mut self, c: char, quoted: bool) {
        let word = self.word();
        match word.last_mut() {
            Some(Seg::Lit { text, quoted: q }) if *q == quoted => text.push(c),
            _ => word.push(Seg::Lit {
                text: c.to_string(),
                quoted,
            }),
        }
    }

    fn skip_comment(&mut self) {
        while self.chars.next_if(|c| *c != '\n').is_some() {}
    }

    fn unquoted_escape(&mut self) {
        match self.chars.next() {
            Some('\n') | None => {}
            Some(c) => self.push_lit(c, true),
        }
    }

    fn single_quoted(&mut self) {
        self.word().push(Seg::Lit {
            text: String::new(),
            quoted: true,
        });
        while let Some(c) = self.chars.next() {
            if c == '\'' {
                return;
            }
            self.push_lit(c, true);
        }
    }

    fn double_quoted(&mut self) {
        self.word().push(Seg::Lit {
            text: String::new(),
            quoted: true,
        });
        while let Some(c) = self.chars.next() {
            match c {
                '"' => return,
                '\\' => self.quoted_escape(),
                '$' => self.dollar(true),
                '`' => self.backtick(),
                c => self.push_lit(c, true),
            }
        }
    }

    fn quoted_escape(&mut self) {
        match self
            .chars
            .next_if(|c| matches!(c, '$' | '`' | '"' | '\\' | '\n'))
        {
            Some('\n') => {}
            Some(c) => self.push_lit(c, true),
            None => self.push_lit('\\', true),
        }
    }

    /// After a `$`: `${…}`, `$(…)`, `$NAME`, `$1`/`$?`…, or a literal `$`.
    fn dollar(&mut self, quoted: bool) {
        let mut raw = String::from("$");
        match self.chars.peek().copied() {
            Some(open @ ('{' | '(')) => {
                let close = if open == '{' { '}' } else { ')' };
                self.read_balanced(&mut raw, open, close);
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                while let Some(c) = self
                    .chars
                    .next_if(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    raw.push(c);
                }
            }
            Some(c) if c.is_ascii_digit() || "#?*@!$-".contains(c) => {
                raw.push(c);
                self.chars.next();
            }
            _ => return self.push_lit('$', quoted),
        }
        self.word().push(Seg::Expand(raw));
    }

    /// Reads from the opening bracket to its matching close, into `raw`.
    fn read_balanced(&mut self, raw: &mut String, open: char, close: char) {
        let mut depth = 0usize;
        for c in self.chars.by_ref() {
            raw.push(c);
            if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
        }
    }

    fn backtick(&mut self) {
        let mut raw = String::from("`");
        while let Some(c) = self.chars.next() {
            raw.push(c);
            match c {
                '`' => break,
                '\\' => raw.extend(self.chars.next()),
                _ => {}
            }
        }
        self.word().push(Seg::Expand(raw));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lit(text: &str, quoted: bool) -> Seg {
        Seg::Lit {
            text: text.to_owned(),
            quoted,
        }
    }

    #[test]
    fn splits_statements_and_words() {
        let lexed = lex("A=1 B='x y'; # comment\nC=\"a$B\\\"\" D[2]=$(echo ) x\\\n");
        assert!(!lexed.control);
        assert_eq!(lexed.statements.len(), 2);
        assert_eq!(
            lexed.statements[0],
            vec![
                vec![lit("A=1", false)],
                vec![lit("B=", false), lit("x y", true)]
            ]
        );
        let second = &lexed.statements[1];
        assert_eq!(
            second[0],
            vec![
                lit("C=", false),
                lit("a", true),
                Seg::Expand("$B".into()),
                lit("\"", true)
            ]
        );
        assert_eq!(
            second[1],
            vec![lit("D[2]=", false), Seg::Expand("$(echo )".into())]
        );
        assert_eq!(second[2], vec![lit("x", false)]);
        assert_eq!(second.len(), 3);
    }

    #[test]
    fn notices_control_operators() {
        for text in ["a && b", "a || b", "a | b", "(a)", "a > f", "a &"] {
            assert!(lex(text).control, "{text}");
        }
        assert!(!lex("a='&&' b=\"||\"").control);
    }

    #[test]
    fn empty_quotes_make_a_word() {
        assert_eq!(lex("\"\"").statements, vec![vec![vec![lit("", true)]]]);
    }
}
