//! TraceQL lexer: turns query text into tokens, each with its byte span. It owns the
//! character-level rules (which runes may appear in attribute names, string escapes, number and
//! duration literals, comments); it knows nothing about grammar. Words (keywords, intrinsics,
//! function names) come out as `Word` and the parser gives them meaning. Attributes
//! (`.a`, `span.a`, `parent.resource.a`, `span."a b"`) come out whole as one `Attribute` token,
//! because their names follow different rules from the rest of the language.
//! A lexing failure becomes a final `Error` token so the parser reports it in order.

use super::ast::Scope;
use super::duration::parse_duration;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Word(String),
    Attribute {
        scope: Scope,
        parent: bool,
        name: String,
    },
    /// `trace:`, `span:`, `event:`, `link:`, `instrumentation:`; the intrinsic name follows as a word.
    ScopeColon(String),
    Str(String),
    Int(i64),
    Float(f64),
    /// Nanoseconds.
    Duration(i64),
    LBrace,
    RBrace,
    LParen,
    RParen,
    Comma,
    Eq,
    Neq,
    Re,
    Nre,
    Gt,
    Gte,
    Lt,
    Lte,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    And,
    Or,
    Not,
    Pipe,
    Desc,
    Ance,
    Sibl,
    NotChild,
    NotParent,
    NotDesc,
    NotAnce,
    UnionChild,
    UnionParent,
    UnionDesc,
    UnionAnce,
    UnionSibl,
    /// A lexing failure; always the last token before `Eof`.
    Error(String),
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Attribute { .. } => "attribute".to_string(),
            Tok::ScopeColon(s) => format!("`{s}:`"),
            Tok::Str(_) => "string".to_string(),
            Tok::Int(i) => format!("integer {i}"),
            Tok::Float(f) => format!("float {f:?}"),
            Tok::Duration(_) => "duration".to_string(),
            Tok::Error(m) => m.clone(),
            Tok::Eof => "end of query".to_string(),
            other => format!("`{}`", other.symbol()),
        }
    }

    /// The spelling of punctuation and operator tokens.
    pub fn symbol(&self) -> &'static str {
        match self {
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::Comma => ",",
            Tok::Eq => "=",
            Tok::Neq => "!=",
            Tok::Re => "=~",
            Tok::Nre => "!~",
            Tok::Gt => ">",
            Tok::Gte => ">=",
            Tok::Lt => "<",
            Tok::Lte => "<=",
            Tok::Add => "+",
            Tok::Sub => "-",
            Tok::Mul => "*",
            Tok::Div => "/",
            Tok::Mod => "%",
            Tok::Pow => "^",
            Tok::And => "&&",
            Tok::Or => "||",
            Tok::Not => "!",
            Tok::Pipe => "|",
            Tok::Desc => ">>",
            Tok::Ance => "<<",
            Tok::Sibl => "~",
            Tok::NotChild => "!>",
            Tok::NotParent => "!<",
            Tok::NotDesc => "!>>",
            Tok::NotAnce => "!<<",
            Tok::UnionChild => "&>",
            Tok::UnionParent => "&<",
            Tok::UnionDesc => "&>>",
            Tok::UnionAnce => "&<<",
            Tok::UnionSibl => "&~",
            _ => "",
        }
    }

    pub fn is_word(&self, w: &str) -> bool {
        matches!(self, Tok::Word(x) if x == w)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub tok: Tok,
    /// Byte offsets of the token in the query.
    pub start: usize,
    pub end: usize,
}

/// Characters that may appear unquoted in an attribute name: anything but whitespace and the
/// characters that end an attribute in Tempo (`{ } ( ) = ~ ! < > & | ^ ,`).
pub fn is_attribute_char(c: char) -> bool {
    !c.is_whitespace()
        && !matches!(
            c,
            '{' | '}' | '(' | ')' | '=' | '~' | '!' | '<' | '>' | '&' | '|' | '^' | ','
        )
}

fn is_duration_char(c: char) -> bool {
    c.is_ascii_digit()
        || matches!(
            c,
            '.' | 'n' | 's' | 'u' | 'm' | 'h' | '\u{b5}' | 'd' | 'w' | 'y'
        )
}

const ATTRIBUTE_SCOPES: [(&str, Scope); 6] = [
    ("resource", Scope::Resource),
    ("span", Scope::Span),
    ("event", Scope::Event),
    ("link", Scope::Link),
    ("instrumentation", Scope::Instrumentation),
    ("parent", Scope::None),
];

const COLON_SCOPES: [&str; 5] = ["trace", "span", "event", "link", "instrumentation"];

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    out: Vec<Token>,
}

/// Lex the whole query. Never fails: a problem becomes a trailing `Tok::Error`, and the list
/// always ends with `Tok::Eof`.
pub fn tokenize(src: &str) -> Vec<Token> {
    let mut lx = Lexer {
        src,
        pos: 0,
        out: Vec::new(),
    };
    loop {
        match lx.next_token() {
            Ok(Some(t)) => lx.out.push(t),
            Ok(None) => break,
            Err((at, msg)) => {
                lx.out.push(Token {
                    tok: Tok::Error(msg),
                    start: at,
                    end: at,
                });
                break;
            }
        }
    }
    let end = src.len();
    lx.out.push(Token {
        tok: Tok::Eof,
        start: end,
        end,
    });
    lx.out
}

type LexResult<T> = Result<T, (usize, String)>;

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek2(&self) -> Option<char> {
        let mut it = self.rest().chars();
        it.next();
        it.next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_space_and_comments(&mut self) -> LexResult<()> {
        loop {
            let rest = self.rest();
            if let Some(c) = rest.chars().next().filter(|c| c.is_whitespace()) {
                self.pos += c.len_utf8();
            } else if rest.starts_with("//") {
                self.pos += rest.find('\n').unwrap_or(rest.len());
            } else if let Some(body) = rest.strip_prefix("/*") {
                match body.find("*/") {
                    Some(i) => self.pos += i + 4,
                    None => return Err((self.pos, "comment not terminated".to_string())),
                }
            } else {
                return Ok(());
            }
        }
    }

    fn next_token(&mut self) -> LexResult<Option<Token>> {
        self.skip_space_and_comments()?;
        let start = self.pos;
        let Some(c) = self.peek() else {
            return Ok(None);
        };
        let tok = if c.is_alphabetic() || c == '_' {
            return self.word(start).map(Some);
        } else if c.is_ascii_digit()
            || (c == '.' && self.peek2().is_some_and(|d| d.is_ascii_digit()))
        {
            self.number()?
        } else if c == '.' {
            self.bump();
            return self.attribute(start, Scope::None, false).map(Some);
        } else if c == '"' {
            self.bump();
            Tok::Str(self.quoted_string(start)?)
        } else if c == '`' {
            self.bump();
            Tok::Str(self.raw_string(start)?)
        } else {
            self.operator(start)?
        };
        Ok(Some(Token {
            tok,
            start,
            end: self.pos,
        }))
    }

    fn operator(&mut self, start: usize) -> LexResult<Tok> {
        let rest = self.rest();
        const OPS: &[(&str, Tok)] = &[
            ("!>>", Tok::NotDesc),
            ("!<<", Tok::NotAnce),
            ("&>>", Tok::UnionDesc),
            ("&<<", Tok::UnionAnce),
            ("!=", Tok::Neq),
            ("!~", Tok::Nre),
            ("!>", Tok::NotChild),
            ("!<", Tok::NotParent),
            ("=~", Tok::Re),
            (">=", Tok::Gte),
            ("<=", Tok::Lte),
            (">>", Tok::Desc),
            ("<<", Tok::Ance),
            ("&&", Tok::And),
            ("||", Tok::Or),
            ("&>", Tok::UnionChild),
            ("&<", Tok::UnionParent),
            ("&~", Tok::UnionSibl),
            ("{", Tok::LBrace),
            ("}", Tok::RBrace),
            ("(", Tok::LParen),
            (")", Tok::RParen),
            (",", Tok::Comma),
            ("=", Tok::Eq),
            (">", Tok::Gt),
            ("<", Tok::Lt),
            ("+", Tok::Add),
            ("-", Tok::Sub),
            ("*", Tok::Mul),
            ("/", Tok::Div),
            ("%", Tok::Mod),
            ("^", Tok::Pow),
            ("!", Tok::Not),
            ("|", Tok::Pipe),
            ("~", Tok::Sibl),
        ];
        for (text, tok) in OPS.iter() {
            if rest.starts_with(text) {
                self.pos += text.len();
                return Ok(tok.clone());
            }
        }
        let c = self.peek().unwrap_or('\u{0}');
        Err((start, format!("unexpected character {c:?}")))
    }

    fn word(&mut self, start: usize) -> LexResult<Token> {
        while let Some(c) = self.peek() {
            if c.is_alphanumeric() || c == '_' {
                self.bump();
            } else {
                break;
            }
        }
        let word = &self.src[start..self.pos];
        match self.peek() {
            Some('.') => {
                if let Some((_, scope)) = ATTRIBUTE_SCOPES.iter().find(|(w, _)| *w == word) {
                    self.bump();
                    if word == "parent" {
                        let rest = self.rest();
                        let (inner, len) = if rest.starts_with("span.") {
                            (Scope::Span, 5)
                        } else if rest.starts_with("resource.") {
                            (Scope::Resource, 9)
                        } else {
                            (Scope::None, 0)
                        };
                        self.pos += len;
                        return self.attribute(start, inner, true);
                    }
                    return self.attribute(start, *scope, false);
                }
            }
            Some(':') if COLON_SCOPES.contains(&word) => {
                self.bump();
                return Ok(Token {
                    tok: Tok::ScopeColon(word.to_string()),
                    start,
                    end: self.pos,
                });
            }
            _ => {}
        }
        Ok(Token {
            tok: Tok::Word(word.to_string()),
            start,
            end: self.pos,
        })
    }

    /// The name part of an attribute, after its scope prefix has been consumed.
    fn attribute(&mut self, start: usize, scope: Scope, parent: bool) -> LexResult<Token> {
        let mut name = String::new();
        let mut quoted = false;
        loop {
            match self.peek() {
                Some('"') => {
                    let qstart = self.pos;
                    self.bump();
                    quoted = true;
                    loop {
                        match self.bump() {
                            None => {
                                return Err((
                                    qstart,
                                    "unterminated quoted attribute name".to_string(),
                                ))
                            }
                            Some('"') => break,
                            Some('\\') => match self.bump() {
                                Some(c @ ('"' | '\\')) => name.push(c),
                                _ => {
                                    return Err((
                                        self.pos.saturating_sub(1),
                                        "invalid escape sequence in attribute name".to_string(),
                                    ))
                                }
                            },
                            Some(c) => name.push(c),
                        }
                    }
                }
                Some(c) if is_attribute_char(c) => {
                    self.bump();
                    name.push(c);
                }
                _ => break,
            }
        }
        if name.is_empty() && !quoted {
            return Err((self.pos, "expected an attribute name".to_string()));
        }
        if name.is_empty() {
            return Err((start, "attribute name must not be empty".to_string()));
        }
        Ok(Token {
            tok: Tok::Attribute {
                scope,
                parent,
                name,
            },
            start,
            end: self.pos,
        })
    }

    fn digits(&mut self) -> usize {
        let mut n = 0;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
            n += 1;
        }
        n
    }

    fn number(&mut self) -> LexResult<Tok> {
        let start = self.pos;
        let mut is_float = false;
        self.digits();
        if self.peek() == Some('.') {
            self.bump();
            is_float = true;
            self.digits();
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            let save = self.pos;
            self.bump();
            if matches!(self.peek(), Some('+' | '-')) {
                self.bump();
            }
            if self.digits() == 0 {
                self.pos = save;
            } else {
                is_float = true;
            }
        }
        let number_end = self.pos;
        // A duration is the number plus the run of digits, dots and unit letters after it,
        // when that whole run reads as a duration.
        let run_len: usize = self
            .rest()
            .chars()
            .take_while(|c| is_duration_char(*c))
            .map(char::len_utf8)
            .sum();
        if run_len > 0 {
            let text = &self.src[start..number_end + run_len];
            if let Some(d) = parse_duration(text) {
                self.pos = number_end + run_len;
                return Ok(Tok::Duration(d));
            }
        }
        let text = &self.src[start..number_end];
        if is_float {
            match text.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Tok::Float(f)),
                _ => Err((start, format!("invalid number {text:?}"))),
            }
        } else {
            text.parse::<i64>()
                .map(Tok::Int)
                .map_err(|_| (start, format!("integer {text} out of range")))
        }
    }

    fn raw_string(&mut self, start: usize) -> LexResult<String> {
        let rest = self.rest();
        match rest.find('`') {
            Some(i) => {
                let s = rest[..i].replace('\r', "");
                self.pos += i + 1;
                Ok(s)
            }
            None => Err((start, "string literal not terminated".to_string())),
        }
    }

    fn hex_digits(&mut self, n: usize, at: usize) -> LexResult<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let d = self
                .bump()
                .and_then(|c| c.to_digit(16))
                .ok_or((at, "invalid escape sequence in string".to_string()))?;
            v = v * 16 + d;
        }
        Ok(v)
    }

    fn quoted_string(&mut self, start: usize) -> LexResult<String> {
        let mut s = String::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None | Some('\n') => {
                    return Err((start, "string literal not terminated".to_string()))
                }
                Some('"') => return Ok(s),
                Some('\\') => {
                    let bad = || (at, "invalid escape sequence in string".to_string());
                    let c = match self.bump().ok_or_else(bad)? {
                        'a' => '\u{7}',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        'v' => '\u{b}',
                        '\\' => '\\',
                        '"' => '"',
                        'x' => {
                            let v = self.hex_digits(2, at)?;
                            if v > 0x7f {
                                return Err((at, "non-ascii \\x escape in string".to_string()));
                            }
                            char::from_u32(v).ok_or_else(bad)?
                        }
                        'u' => char::from_u32(self.hex_digits(4, at)?).ok_or_else(bad)?,
                        'U' => char::from_u32(self.hex_digits(8, at)?).ok_or_else(bad)?,
                        d @ '0'..='7' => {
                            let mut v = d.to_digit(8).unwrap_or(0);
                            for _ in 0..2 {
                                let e = self.bump().and_then(|c| c.to_digit(8)).ok_or_else(bad)?;
                                v = v * 8 + e;
                            }
                            if v > 0x7f {
                                return Err((at, "non-ascii octal escape in string".to_string()));
                            }
                            char::from_u32(v).ok_or_else(bad)?
                        }
                        _ => return Err(bad()),
                    };
                    s.push(c);
                }
                Some(c) => s.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s).into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn operators_longest_match() {
        assert_eq!(
            toks("!>> &<< >= >> ~ !~ &~ | ||"),
            vec![
                Tok::NotDesc,
                Tok::UnionAnce,
                Tok::Gte,
                Tok::Desc,
                Tok::Sibl,
                Tok::Nre,
                Tok::UnionSibl,
                Tok::Pipe,
                Tok::Or,
                Tok::Eof
            ]
        );
    }

    #[test]
    fn attributes_and_scopes() {
        let t = tokenize("{ parent.resource.k8s.pod-name=~\"x\" && span.\"a b\".c }");
        assert_eq!(
            t[1].tok,
            Tok::Attribute {
                scope: Scope::Resource,
                parent: true,
                name: "k8s.pod-name".into()
            }
        );
        assert_eq!(
            &"{ parent.resource.k8s.pod-name=~"[t[1].start..],
            "parent.resource.k8s.pod-name=~"
        );
        assert_eq!(
            t[5].tok,
            Tok::Attribute {
                scope: Scope::Span,
                parent: false,
                name: "a b.c".into()
            }
        );
        assert_eq!(toks("span:name")[0], Tok::ScopeColon("span".into()));
    }

    #[test]
    fn numbers_and_durations() {
        assert_eq!(toks("1.5s")[0], Tok::Duration(1_500_000_000));
        assert_eq!(toks("2h30m")[0], Tok::Duration(9_000_000_000_000));
        assert_eq!(toks("10")[0], Tok::Int(10));
        assert_eq!(toks(".5")[0], Tok::Float(0.5));
        assert_eq!(toks("1e3")[0], Tok::Float(1000.0));
        assert_eq!(toks("2m3")[..2], [Tok::Int(2), Tok::Word("m3".into())]);
    }

    #[test]
    fn strings() {
        assert_eq!(
            toks(r#""a\"b\\c\n\t\u00e9""#)[0],
            Tok::Str("a\"b\\c\n\té".into())
        );
        assert_eq!(toks("`a\\nb`")[0], Tok::Str("a\\nb".into()));
        assert!(matches!(toks("\"abc")[0], Tok::Error(_)));
        assert!(matches!(toks(r#""\q""#)[0], Tok::Error(_)));
    }
}
