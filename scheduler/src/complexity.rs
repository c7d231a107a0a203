//! Static complexity analysis of Python source, in Rust, without running it.
//!
//! A small tokenizer (strings, comments, brackets, line continuations and indentation
//! handled as Python does) feeds McCabe-style counting: 1 per function plus 1 per decision
//! point (`if`, `elif`, `for`, `while`, `except`, `with`, `assert`, `case`, `and`, `or`;
//! comprehension filters and conditional expressions are `if`/`for` tokens too). The class
//! is cut from a weighted score documented in docs/ARCHITECTURE.md.

use qefleet_schemas::{Complexity, ComplexityReport};

/// Source the tokenizer could not make sense of.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    #[error("unterminated string starting on line {0}")]
    UnterminatedString(u32),
    #[error("unbalanced brackets: {0} still open at end of file")]
    UnclosedBrackets(u32),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    Name(&'a str),
    Str,
    Op(u8),
}

#[derive(Debug, Clone)]
struct Token<'a> {
    tok: Tok<'a>,
    line: u32,
    /// Indentation column when this token starts a logical line.
    starts_line_at: Option<usize>,
}

/// The character at byte `i` of `src` and its length in bytes (ASCII without decoding).
fn char_at(src: &str, i: usize) -> (char, usize) {
    let b = src.as_bytes()[i];
    if b.is_ascii() {
        return (b as char, 1);
    }
    let c = src[i..].chars().next().unwrap_or('\u{fffd}');
    (c, c.len_utf8())
}

/// Splits `src` into names, strings and operator characters, scanning bytes (Python's
/// syntax is ASCII; only identifiers may hold other letters, decoded where they occur).
fn tokenize(src: &str) -> Result<Vec<Token<'_>>, SourceError> {
    let bytes = src.as_bytes();
    let mut out = Vec::with_capacity(src.len() / 4);
    let (mut i, mut line, mut depth) = (0usize, 1u32, 0u32);
    let mut at_line_start = true;
    let mut col = 0usize;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => {
                line += 1;
                i += 1;
                col = 0;
                if depth == 0 {
                    at_line_start = true;
                }
                continue;
            }
            b' ' | b'\t' | b'\x0c' | b'\r' => {
                col += if b == b'\t' { 8 - col % 8 } else { 1 };
                i += 1;
                continue;
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\\' if bytes.get(i + 1) == Some(&b'\n') => {
                i += 2;
                line += 1;
                continue;
            }
            _ => {}
        }
        let starts_line_at = if at_line_start && depth == 0 {
            at_line_start = false;
            Some(col)
        } else {
            None
        };
        let start_line = line;
        let (c, width) = char_at(src, i);
        if c.is_alphabetic() || c == '_' {
            let start = i;
            let mut chars = 0;
            while i < bytes.len() {
                let (c, width) = char_at(src, i);
                if !(c.is_alphanumeric() || c == '_') {
                    break;
                }
                i += width;
                chars += 1;
            }
            let word = &src[start..i];
            if matches!(bytes.get(i), Some(b'\'' | b'"')) && is_string_prefix(word) {
                line = skip_string(bytes, &mut i, line)?;
                out.push(Token {
                    tok: Tok::Str,
                    line: start_line,
                    starts_line_at,
                });
            } else {
                out.push(Token {
                    tok: Tok::Name(word),
                    line: start_line,
                    starts_line_at,
                });
            }
            col += chars;
            continue;
        }
        if b == b'\'' || b == b'"' {
            line = skip_string(bytes, &mut i, line)?;
            out.push(Token {
                tok: Tok::Str,
                line: start_line,
                starts_line_at,
            });
            continue;
        }
        match b {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        out.push(Token {
            tok: Tok::Op(b),
            line: start_line,
            starts_line_at,
        });
        i += width;
        col += 1;
    }
    if depth > 0 {
        return Err(SourceError::UnclosedBrackets(depth));
    }
    Ok(out)
}

fn is_string_prefix(word: &str) -> bool {
    word.len() <= 2
        && matches!(
            word.to_ascii_lowercase().as_str(),
            "r" | "u" | "b" | "f" | "br" | "rb" | "fr" | "rf" | "t" | "tr" | "rt"
        )
}

/// Advances `i` past the string literal starting at `bytes[i]`; returns the line after it.
fn skip_string(bytes: &[u8], i: &mut usize, mut line: u32) -> Result<u32, SourceError> {
    let start_line = line;
    let quote = bytes[*i];
    let triple = bytes.get(*i + 1) == Some(&quote) && bytes.get(*i + 2) == Some(&quote);
    *i += if triple { 3 } else { 1 };
    while *i < bytes.len() {
        let c = bytes[*i];
        if c == b'\\' {
            if bytes.get(*i + 1) == Some(&b'\n') {
                line += 1;
            }
            *i += 2;
            continue;
        }
        if c == b'\n' {
            if !triple {
                return Err(SourceError::UnterminatedString(start_line));
            }
            line += 1;
        }
        if c == quote {
            if !triple {
                *i += 1;
                return Ok(line);
            }
            if bytes.get(*i + 1) == Some(&quote) && bytes.get(*i + 2) == Some(&quote) {
                *i += 3;
                return Ok(line);
            }
        }
        *i += 1;
    }
    Err(SourceError::UnterminatedString(start_line))
}

const DECISIONS: [&str; 10] = [
    "if", "elif", "for", "while", "except", "with", "assert", "and", "or", "case",
];

/// Counts and names found in a module.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub report: ComplexityReport,
    /// Functions as `name` or `Class.method`, in source order.
    pub functions: Vec<String>,
}

struct Scope {
    indent: usize,
    name: String,
    function: Option<usize>,
}

/// Analyses a module and classifies it.
pub fn analyze(src: &str) -> Result<Analysis, SourceError> {
    let tokens = tokenize(src)?;
    let mut scopes: Vec<Scope> = Vec::new();
    let mut function_decisions: Vec<u32> = Vec::new();
    let mut functions = Vec::new();
    let (mut module_decisions, mut classes, mut async_functions, mut imports) = (0u32, 0, 0, 0);
    // Tokens come in line order: a line holds code when a token starts on it.
    let (mut code_lines, mut last_line) = (0u32, 0u32);
    for (n, token) in tokens.iter().enumerate() {
        if token.line != last_line {
            code_lines += 1;
            last_line = token.line;
        }
        let name = match token.tok {
            Tok::Name(name) => name,
            _ => continue,
        };
        if let Some(indent) = token.starts_line_at {
            while scopes.last().is_some_and(|s| s.indent >= indent) {
                scopes.pop();
            }
            let next_name = |k: usize| match tokens.get(n + k).map(|t| &t.tok) {
                Some(Tok::Name(s)) => Some(*s),
                _ => None,
            };
            let (is_def, is_async) = match name {
                "def" => (true, false),
                "async" if next_name(1) == Some("def") => (true, true),
                _ => (false, false),
            };
            if is_def {
                let fname = next_name(if is_async { 2 } else { 1 }).unwrap_or_default();
                let qualified = match scopes.last() {
                    Some(s) if s.function.is_none() => format!("{}.{fname}", s.name),
                    _ => fname.to_string(),
                };
                if is_async {
                    async_functions += 1;
                }
                function_decisions.push(0);
                // Nested functions are reachable only through their parent: not targets.
                if scopes.iter().all(|s| s.function.is_none()) {
                    functions.push(qualified.clone());
                }
                scopes.push(Scope {
                    indent,
                    name: qualified,
                    function: Some(function_decisions.len() - 1),
                });
                continue;
            }
            if name == "class" {
                classes += 1;
                scopes.push(Scope {
                    indent,
                    name: next_name(1).unwrap_or_default().to_string(),
                    function: None,
                });
                continue;
            }
            if name == "import" || name == "from" {
                imports += 1;
            }
        }
        let is_case = name == "case" && token.starts_line_at.is_some();
        if DECISIONS.contains(&name) && (name != "case" || is_case) {
            match scopes.iter().rev().find_map(|s| s.function) {
                Some(f) => function_decisions[f] += 1,
                None => module_decisions += 1,
            }
        }
    }
    let branches = module_decisions + function_decisions.iter().sum::<u32>();
    let function_count = function_decisions.len() as u32;
    let cyclomatic = function_count.max(1) + branches;
    let max_function_cyclomatic = function_decisions.iter().map(|d| d + 1).max().unwrap_or(1);
    let score = 0.5 * f64::from(cyclomatic)
        + 1.5 * f64::from(max_function_cyclomatic)
        + f64::from(code_lines) / 20.0
        + 2.0 * f64::from(classes)
        + f64::from(async_functions)
        + 0.25 * f64::from(imports);
    let class = classify(score);
    Ok(Analysis {
        report: ComplexityReport {
            class,
            score: (score * 100.0).round() / 100.0,
            cyclomatic,
            max_function_cyclomatic,
            code_lines,
            functions: function_count,
            async_functions,
            classes,
            branches,
            imports,
        },
        functions,
    })
}

/// Cuts a score into a class: < 10 simple, < 25 moderate, < 60 complex, else very complex.
pub fn classify(score: f64) -> Complexity {
    match score {
        s if s < 10.0 => Complexity::Simple,
        s if s < 25.0 => Complexity::Moderate,
        s if s < 60.0 => Complexity::Complex,
        _ => Complexity::VeryComplex,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_functions_classes_and_decisions() {
        let src = r#"
import os
from typing import List

class Stack:
    """A stack. if and or while in a docstring do not count."""
    def push(self, x):
        if x is None and self.strict:  # if in a comment does not count
            raise ValueError("no None")
        self.items.append(x)

    async def drain(self):
        while self.items:
            yield self.items.pop()

def total(xs: List[int]) -> int:
    return sum(x for x in xs if x > 0) if xs else 0
"#;
        let a = analyze(src).expect("tokenizes");
        let r = &a.report;
        assert_eq!(r.functions, 3);
        assert_eq!(r.async_functions, 1);
        assert_eq!(r.classes, 1);
        assert_eq!(r.imports, 2);
        // push: if, and; drain: while; total: for, if, if
        assert_eq!(r.branches, 6);
        assert_eq!(r.cyclomatic, 3 + 6);
        assert_eq!(r.max_function_cyclomatic, 4);
        assert_eq!(a.functions, vec!["Stack.push", "Stack.drain", "total"]);
        assert_eq!(r.class, Complexity::Moderate);
    }

    #[test]
    fn strings_with_prefixes_and_continuations_are_skipped() {
        let src = "x = rb'\\'' + f\"{y}\" \\\n    + '''if\nor'''\ndef f():\n    return 1\n";
        let a = analyze(src).expect("tokenizes");
        assert_eq!(a.report.branches, 0);
        assert_eq!(a.functions, vec!["f"]);
    }

    #[test]
    fn identifiers_and_strings_beyond_ascii_are_read_whole() {
        let src = "class Größe:\n\tdef maß(self, x):  # ü\n\t\tif x: return 'ünïcode if'\n\t\treturn x\n\ndef naïve(): return 1\n";
        let a = analyze(src).expect("tokenizes");
        assert_eq!(a.functions, vec!["Größe.maß", "naïve"]);
        assert_eq!(a.report.branches, 1);
        assert_eq!(a.report.code_lines, 5);
    }

    #[test]
    fn broken_source_is_reported() {
        assert_eq!(
            analyze("x = '''never closed\n").expect_err("unterminated"),
            SourceError::UnterminatedString(1)
        );
        assert_eq!(
            analyze("f(1, [2,\n").expect_err("unclosed"),
            SourceError::UnclosedBrackets(2)
        );
    }

    #[test]
    fn bigger_modules_climb_the_classes() {
        let mut src = String::new();
        for i in 0..40 {
            src.push_str(&format!(
                "def f{i}(a, b):\n    if a and b:\n        return 1\n    elif a or b:\n        return 2\n    for x in a:\n        while x:\n            x -= 1\n    return 0\n\n"
            ));
        }
        let r = analyze(&src).expect("tokenizes").report;
        assert_eq!(r.functions, 40);
        assert_eq!(r.class, Complexity::VeryComplex);
        assert_eq!(classify(12.0), Complexity::Moderate);
        assert_eq!(classify(30.0), Complexity::Complex);
    }
}
