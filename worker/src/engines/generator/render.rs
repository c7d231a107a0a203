//! Writing the kept cases as a readable pytest file: observed values as regression
//! oracles (parametrised per function where that reads better), observed exceptions
//! through `pytest.raises`.

use std::collections::BTreeMap;

use super::inputs::{Call, INSTANCE};
use super::targets::{Owner, Target};

/// What a call did when probed.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Value {
        repr: String,
        literal: bool,
        float: bool,
    },
    /// The exception's name as the test refers to it, and a `match` pattern for its
    /// message (Python source), when it has a deterministic one.
    Raises {
        exception: String,
        message: Option<String>,
    },
    /// The instance the method was called on (a fluent method: `return self`).
    ReturnsSelf,
    /// An instance whose `repr` shows no value (`<mod.Bag object at 0x...>`): its public
    /// attributes (name, repr, is a float) are asserted instead.
    Object { fields: Vec<(String, String, bool)> },
}

/// A call kept for the suite, with its outcome and the module lines it executes.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub call: Call,
    pub outcome: Outcome,
    pub lines: Vec<u32>,
    /// Public attributes of the instance after the call (name, repr, is a float).
    pub state: Vec<(String, String, bool)>,
    /// Inspectors of the instance after the call and what they returned (repr, is a
    /// literal, is a float), deterministic ones only.
    pub observed: Vec<(String, String, bool, bool)>,
    /// Mutation sites (of `qefleet_mutants.py`) whose mutants this case's test kills and
    /// no case before it did, as the probe found.
    pub kills: Vec<u32>,
    /// Arcs between module lines the call itself took (coverage.py's branch arcs; entry
    /// and exit as minus the function's first line).
    pub arcs: Vec<(i32, i32)>,
    /// Kept for what a cover of lines does not see (mutants it kills first, branches only
    /// it takes): the loop's minimisation keeps its test.
    pub pinned: bool,
}

/// The generated file, and which target each test function belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub text: String,
    pub tests: BTreeMap<String, usize>,
    /// Test functions with a pinned case (mutants it kills, branches only it takes): the
    /// loop's minimisation keeps them (it covers lines, and its own mutation run samples
    /// the mutants and may not see those).
    pub pinned: Vec<String>,
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

fn expected(repr: &str, float: bool) -> String {
    if float && repr.parse::<f64>().is_ok() {
        format!("pytest.approx({repr})")
    } else {
        repr.to_string()
    }
}

fn assertion(expr: &str, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Value {
            repr,
            literal: true,
            float,
        } if repr == "None" && !float => {
            format!("assert {expr} is None")
        }
        Outcome::Value {
            repr,
            literal: true,
            float,
        } => format!("assert {expr} == {}", expected(repr, *float)),
        Outcome::Value { repr, .. } => {
            format!(
                "assert repr({expr}) == {}",
                serde_json::to_string(repr).unwrap_or_default()
            )
        }
        Outcome::ReturnsSelf => format!("assert {expr} is {INSTANCE}"),
        Outcome::Object { fields } => {
            let mut out = format!("result = {expr}");
            for (name, repr, float) in fields {
                out.push_str(&format!(
                    "\n    assert result.{name} == {}",
                    expected(repr, *float)
                ));
            }
            out
        }
        Outcome::Raises {
            exception,
            message: None,
        } => format!("with pytest.raises({exception}):\n        {expr}"),
        Outcome::Raises {
            exception,
            message: Some(pattern),
        } => format!("with pytest.raises({exception}, match={pattern}):\n        {expr}"),
    }
}

/// The body of one test function, indented: setup, the call with its oracle, and the
/// instance's state after it. A method tested on a freshly built instance whose state is
/// not asserted reads best as one line, `mod.Class(args).method(args)`.
fn body(case: &Case) -> String {
    let call = &case.call;
    let constructor = call
        .setup
        .first()
        .and_then(|s| s.strip_prefix(&format!("{INSTANCE} = ")));
    if call.setup.is_empty() {
        return format!("    {}\n", assertion(&call.expr, &case.outcome));
    }
    let returned = !matches!(case.outcome, Outcome::Raises { .. });
    let asserts_state = returned && !(case.state.is_empty() && case.observed.is_empty());
    let method_call =
        call.expr.starts_with(&format!("{INSTANCE}.")) && case.outcome != Outcome::ReturnsSelf;
    if let (1, Some(ctor), false, true) =
        (call.setup.len(), constructor, asserts_state, method_call)
    {
        let expr = call
            .expr
            .replacen(&format!("{INSTANCE}."), &format!("{ctor}."), 1);
        return format!("    {}\n", assertion(&expr, &case.outcome));
    }
    // A command line is set for the test alone (pytest's own `sys.argv` comes back).
    let mut out: String = call
        .setup
        .iter()
        .map(|s| match s.strip_prefix("sys.argv = ") {
            Some(argv) => format!("    monkeypatch.setattr(sys, \"argv\", {argv})\n"),
            None => format!("    {s}\n"),
        })
        .collect();
    match &case.outcome {
        Outcome::Value { repr, .. } if repr == "None" && asserts_state => {
            out.push_str(&format!("    {}\n", call.expr));
        }
        outcome => out.push_str(&format!("    {}\n", assertion(&call.expr, outcome))),
    }
    if asserts_state {
        for (name, repr, float) in &case.state {
            out.push_str(&format!(
                "    assert {INSTANCE}.{name} == {}\n",
                expected(repr, *float)
            ));
        }
        for (expr, repr, literal, float) in &case.observed {
            let outcome = Outcome::Value {
                repr: repr.clone(),
                literal: *literal,
                float: *float,
            };
            out.push_str(&format!("    {}\n", assertion(expr, &outcome)));
        }
    }
    out
}

/// Whether the cases can be one parametrised test, `assert alias.f(*args) == expected`:
/// each call is written exactly so (not wrapped, as `list(...)` around an iterator).
fn parametrizable(alias: &str, target: &Target, cases: &[&Case]) -> bool {
    matches!(target.owner, Owner::Module)
        && !target.is_async
        && !target.is_generator
        && cases.len() >= 2
        && cases.iter().all(|c| {
            c.call.kwargs.is_empty()
                && c.call.setup.is_empty()
                && c.call.expr == format!("{alias}.{}({})", target.name, c.call.args.join(", "))
                && matches!(c.outcome, Outcome::Value { literal: true, .. })
        })
}

/// `def name():` with the body, taking pytest's `monkeypatch` when the body uses it.
fn test_function(name: &str, body: &str) -> String {
    let fixture = if body.contains("monkeypatch.") {
        "monkeypatch"
    } else {
        ""
    };
    format!("\n\ndef {name}({fixture}):\n{body}")
}

/// Standard modules that argument pools and special-method syntax use (see `inputs.rs`,
/// `targets.rs`); the probe has them in its namespace too.
pub const STDLIB_IN_CALLS: [&str; 4] = ["datetime", "io", "pickle", "sys"];

/// Whether `code` refers to `module.` as a name of its own (not `myio.x`, not `'io.'`).
fn uses_module(code: &str, module: &str) -> bool {
    let needle = format!("{module}.");
    code.match_indices(&needle).any(|(at, _)| {
        code[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.' || c == '\'' || c == '"'))
    })
}

/// Renders the suite. `module_name` is imported; `alias` is how the calls name it.
/// `seeded`: the module draws random numbers, so every test seeds `random` as the probe
/// did before observing the values.
pub fn render(
    module_name: &str,
    alias: &str,
    targets: &[Target],
    cases: &[Case],
    seeded: bool,
) -> Rendered {
    let mut text = format!(
        "\"\"\"Tests for {module_name}, generated by qefleet's local generator.\n\n\
         Each expected value was observed by running {module_name}: these are regression\n\
         oracles. Review them: a value that looks wrong points at a bug to fix.\n\"\"\"\n"
    );
    let asyncio = targets.iter().any(|t| t.is_async);
    if asyncio {
        text.push_str("import asyncio\n");
    }
    // Arguments may be built with these standard modules (`io.StringIO(...)` for a file
    // object, `datetime.date(...)`): imported when a call uses them.
    let mut uses_stdlib = false;
    for helper in STDLIB_IN_CALLS {
        let used = cases.iter().any(|c| {
            std::iter::once(&c.call.expr)
                .chain(&c.call.setup)
                .any(|code| uses_module(code, helper))
        });
        if used && helper != alias {
            text.push_str(&format!("import {helper}\n"));
            uses_stdlib = true;
        }
    }
    if seeded {
        text.push_str("import random\n");
    }
    if asyncio || seeded || uses_stdlib {
        text.push('\n');
    }
    text.push_str("import pytest\n\n");
    if module_name == alias {
        text.push_str(&format!("import {module_name}\n"));
    } else {
        text.push_str(&format!("import {module_name} as {alias}\n"));
    }
    if seeded {
        text.push_str(&format!(
            "\n\n@pytest.fixture(autouse=True)\ndef seeded_random():\n    \"\"\"{module_name} draws random numbers: each test starts from the seed its values\n    were observed with.\"\"\"\n    random.seed(0)\n"
        ));
    }
    let mut tests = BTreeMap::new();
    let mut pinned = Vec::new();
    let unique = |base: String, target: usize, tests: &mut BTreeMap<String, usize>| {
        let mut name = base.clone();
        let mut n = 2;
        while tests.contains_key(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        tests.insert(name.clone(), target);
        name
    };
    for (index, target) in targets.iter().enumerate() {
        let mine: Vec<&Case> = cases.iter().filter(|c| c.call.target == index).collect();
        if mine.is_empty() {
            continue;
        }
        let base = format!("test_{}", snake(&target.qualname()));
        let values: Vec<&Case> = mine
            .iter()
            .copied()
            .filter(|c| !matches!(c.outcome, Outcome::Raises { .. }))
            .collect();
        if parametrizable(alias, target, &values) {
            let name = unique(base.clone(), index, &mut tests);
            if values.iter().any(|c| c.pinned) {
                pinned.push(name.clone());
            }
            text.push_str("\n\n@pytest.mark.parametrize(\n    \"args, expected\",\n    [\n");
            for case in &values {
                let Outcome::Value { repr, float, .. } = &case.outcome else {
                    continue;
                };
                let args = match case.call.args.len() {
                    1 => format!("({},)", case.call.args[0]),
                    _ => format!("({})", case.call.args.join(", ")),
                };
                text.push_str(&format!("        ({args}, {}),\n", expected(repr, *float)));
            }
            text.push_str(&format!(
                "    ],\n)\ndef {name}(args, expected):\n    assert {alias}.{}(*args) == expected\n",
                target.name
            ));
        } else {
            for case in &values {
                let name = unique(base.clone(), index, &mut tests);
                if case.pinned {
                    pinned.push(name.clone());
                }
                text.push_str(&test_function(&name, &body(case)));
            }
        }
        for case in mine
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Raises { .. }))
        {
            let Outcome::Raises { exception: exc, .. } = &case.outcome else {
                continue;
            };
            let name = unique(
                format!(
                    "{base}_raises_{}",
                    snake(exc.rsplit('.').next().unwrap_or(exc))
                ),
                index,
                &mut tests,
            );
            if case.pinned {
                pinned.push(name.clone());
            }
            text.push_str(&test_function(&name, &body(case)));
        }
    }
    Rendered {
        text,
        tests,
        pinned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::generator::inputs::synthesize;
    use crate::engines::generator::targets::find_targets;

    #[test]
    fn a_standard_module_counts_as_used_only_by_its_own_name() {
        assert!(uses_module("m.f(io.StringIO('x'))", "io"));
        assert!(uses_module("io.BytesIO(b'')", "io"));
        assert!(!uses_module("m.f(myio.x)", "io"));
        assert!(!uses_module("m.f('io.x')", "io"));
        assert!(!uses_module("m.radio.x", "io"));
    }

    #[test]
    fn values_are_parametrised_and_exceptions_get_their_own_tests() {
        let targets = find_targets("def add(a, b):\n    return a + b\n\nclass Box:\n    def get(self):\n        return 1.5\n").expect("parses");
        let calls = synthesize("calc", &targets, 3, 1, &[], &[]);
        let value = |c: &Call, repr: &str, float: bool| Case {
            call: c.clone(),
            outcome: Outcome::Value {
                repr: repr.into(),
                literal: true,
                float,
            },
            lines: vec![2],
            state: vec![],
            observed: vec![],
            kills: vec![],
            arcs: vec![],
            pinned: false,
        };
        let cases = vec![
            value(&calls[0], "2", false),
            value(&calls[1], "1", false),
            Case {
                call: calls[2].clone(),
                outcome: Outcome::Raises {
                    exception: "TypeError".into(),
                    message: None,
                },
                lines: vec![2],
                state: vec![],
                observed: vec![],
                kills: vec![],
                arcs: vec![],
                pinned: false,
            },
            value(
                calls.iter().find(|c| c.target == 1).expect("method call"),
                "1.5",
                true,
            ),
        ];
        let r = render("calc", "calc", &targets, &cases, false);
        assert!(!r.text.contains("random"));
        let seeded = render("calc", "calc", &targets, &cases, true);
        assert!(
            seeded.text.contains("import random\n\nimport pytest\n")
                && seeded
                    .text
                    .contains("@pytest.fixture(autouse=True)\ndef seeded_random():")
                && seeded.text.contains("    random.seed(0)\n"),
            "{}",
            seeded.text
        );
        assert!(r.text.contains("import calc\n"));
        assert!(
            r.text.contains(
                "@pytest.mark.parametrize(\n    \"args, expected\",\n    [\n        ((1, 1), 2),\n"
            ),
            "{}",
            r.text
        );
        assert!(r
            .text
            .contains("def test_add(args, expected):\n    assert calc.add(*args) == expected\n"));
        assert!(r.text.contains("def test_add_raises_type_error():\n    with pytest.raises(TypeError):\n        calc.add("), "{}", r.text);
        assert!(
            r.text.contains(
                "def test_box_get():\n    assert calc.Box().get() == pytest.approx(1.5)\n"
            ),
            "{}",
            r.text
        );
        assert_eq!(r.tests.get("test_box_get"), Some(&1));
        assert_eq!(r.tests.len(), 3);
    }
}
