//! Prompts for LLM engines (the local causal LM and the cloud engines of later issues),
//! built from the same feedback the refinement loop uses: the module's source with line
//! numbers, lines no test executes yet, branches no test takes, surviving mutants, the
//! output of failing tests, the current suite and retrieved examples of suites that
//! worked.

use super::measure::Survivor;

/// What a prompt is built from.
#[derive(Debug, Clone, Default)]
pub struct Feedback<'a> {
    pub module_name: &'a str,
    pub source: &'a str,
    /// Restrict to one function or `Class.method`.
    pub target_function: Option<&'a str>,
    /// 0 for the first (single-pass) prompt.
    pub round: u32,
    pub uncovered_lines: &'a [u32],
    /// Branches no test took: (from line, to line); a negative target leaves the function.
    pub uncovered_branches: &'a [(i64, i64)],
    pub survivors: &'a [Survivor],
    /// pytest output of failing tests, if the last suite had any.
    pub failing_output: Option<&'a str>,
    /// The best suite so far, to extend rather than rewrite.
    pub current_suite: Option<&'a str>,
    /// Suites of similar modules that scored well (ReasoningBank, a later issue).
    pub examples: &'a [String],
}

/// A chat prompt: system instructions and the user message.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub system: String,
    pub user: String,
}

const SYSTEM: &str =
    "You write pytest unit tests for one Python module. Import the module by its name \
and test it as a user would: never copy its source, never read or patch its own tests or coverage \
tooling. Tests must be deterministic (no network, no clock, no randomness without a seed) and pass \
against the module as it is. Prefer small, readable tests with exact expected values; use \
pytest.raises for errors and pytest.mark.parametrize where it reads better. Reply with one Python \
file in a ```python block and nothing else.";

/// Builds the prompt, keeping it under `max_chars` by trimming the lowest-priority parts
/// first (examples, then the current suite, then failing output; the source is kept).
pub fn build(feedback: &Feedback<'_>, max_chars: usize) -> Prompt {
    let uncovered: std::collections::HashSet<u32> =
        feedback.uncovered_lines.iter().copied().collect();
    let mut numbered = String::new();
    for (i, line) in feedback.source.lines().enumerate() {
        let n = i as u32 + 1;
        let mark = if uncovered.contains(&n) { ">>" } else { "  " };
        numbered.push_str(&format!("{mark}{n:>5} | {line}\n"));
    }
    let mut parts: Vec<(u8, String)> = Vec::new();
    let target = feedback
        .target_function
        .map(|t| format!(" Focus on `{t}`."))
        .unwrap_or_default();
    parts.push((
        9,
        format!(
            "Write pytest tests for the module `{m}` (`import {m}`).{target}\n\nSource, with line numbers{legend}:\n```python\n{numbered}```\n",
            m = feedback.module_name,
            legend = if uncovered.is_empty() { "" } else { "; lines marked >> are not executed by any test yet" },
        ),
    ));
    if !feedback.uncovered_branches.is_empty() {
        let list: Vec<String> = feedback
            .uncovered_branches
            .iter()
            .map(|&(from, to)| {
                if to < 0 {
                    format!("- line {from} → leaving the function")
                } else {
                    format!("- line {from} → line {to}")
                }
            })
            .collect();
        parts.push((
            7,
            format!(
                "No test takes these branches yet; add inputs that do:\n{}\n",
                list.join("\n")
            ),
        ));
    }
    if !feedback.survivors.is_empty() {
        let list: Vec<String> = feedback
            .survivors
            .iter()
            .map(|s| format!("- line {}: {} ({})", s.line, s.description, s.operator))
            .collect();
        parts.push((8, format!("These changes to the module went unnoticed by the current tests; add tests that would fail if they were made:\n{}\n", list.join("\n"))));
    }
    if let Some(output) = feedback.failing_output {
        parts.push((6, format!("These tests failed and were dropped; do not repeat their mistakes:\n```\n{}\n```\n", output.trim())));
    }
    if let Some(suite) = feedback.current_suite {
        parts.push((5, format!("The current suite (round {}); return it extended, not replaced:\n```python\n{}\n```\n", feedback.round, suite.trim())));
    }
    for example in feedback.examples {
        parts.push((
            2,
            format!(
                "A suite that worked well for a similar module:\n```python\n{}\n```\n",
                example.trim()
            ),
        ));
    }
    // Drop the lowest-priority parts until the prompt fits; the source part always stays.
    let mut total: usize = SYSTEM.len() + parts.iter().map(|(_, p)| p.len()).sum::<usize>();
    while total > max_chars {
        let Some(at) = parts
            .iter()
            .enumerate()
            .filter(|(_, (priority, _))| *priority < 9)
            .min_by_key(|(_, (priority, _))| *priority)
            .map(|(i, _)| i)
        else {
            break;
        };
        total -= parts.remove(at).1.len();
    }
    Prompt {
        system: SYSTEM.to_string(),
        user: parts
            .into_iter()
            .map(|(_, p)| p)
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// The Python file in a model's reply: the first fenced block (```python, ```py or a bare
/// fence; an unclosed fence runs to the end), else the whole reply.
pub fn extract_python(reply: &str) -> String {
    let Some(open) = reply.find("```") else {
        return reply.trim().to_string() + "\n";
    };
    let after_fence = &reply[open + 3..];
    // The info string (python, py, nothing) ends the fence's line.
    let body = after_fence
        .find('\n')
        .map(|nl| &after_fence[nl + 1..])
        .unwrap_or("");
    let code = body.find("```").map(|end| &body[..end]).unwrap_or(body);
    code.trim_end().to_string() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_fenced_block_is_the_suite() {
        let reply = "Here you go:\n```python\nimport m\n\ndef test_a():\n    assert m.a() == 1\n```\nAnd more:\n```python\nx\n```";
        assert_eq!(
            extract_python(reply),
            "import m\n\ndef test_a():\n    assert m.a() == 1\n"
        );
        assert_eq!(extract_python("```\nimport m\n```"), "import m\n");
        assert_eq!(
            extract_python("```py\nimport m\n"),
            "import m\n",
            "unclosed fence"
        );
        assert_eq!(extract_python("import m\n\n"), "import m\n", "no fence");
    }

    const SOURCE: &str = "def f(x):\n    if x > 0:\n        return 1\n    return 0\n";

    fn survivor() -> Survivor {
        Survivor {
            line: 2,
            operator: "comparison".into(),
            description: "Gt -> GtE".into(),
        }
    }

    #[test]
    fn the_prompt_carries_source_uncovered_lines_and_branches_survivors_and_failures() {
        let survivors = [survivor()];
        let p = build(
            &Feedback {
                module_name: "m",
                source: SOURCE,
                round: 2,
                uncovered_lines: &[3],
                uncovered_branches: &[(2, 3), (4, -1)],
                survivors: &survivors,
                failing_output: Some("E assert 2 == 1"),
                current_suite: Some("import m\n\ndef test_f():\n    assert m.f(0) == 0\n"),
                ..Feedback::default()
            },
            100_000,
        );
        assert!(p.system.contains("never copy its source"));
        assert!(p.user.contains("`import m`"));
        assert!(p.user.contains(">>    3 |         return 1"), "{}", p.user);
        assert!(p.user.contains("      2 |     if x > 0:"), "{}", p.user);
        assert!(p.user.contains("- line 2: Gt -> GtE (comparison)"));
        assert!(p
            .user
            .contains("- line 2 → line 3\n- line 4 → leaving the function"));
        assert!(p.user.contains("E assert 2 == 1"));
        assert!(p.user.contains("round 2"));
    }

    #[test]
    fn low_priority_parts_are_dropped_to_fit() {
        let examples = vec!["x = 1\n".repeat(500)];
        let survivors = [survivor()];
        let feedback = Feedback {
            module_name: "m",
            source: SOURCE,
            survivors: &survivors,
            examples: &examples,
            ..Feedback::default()
        };
        let roomy = build(&feedback, 100_000);
        assert!(roomy.user.contains("A suite that worked well"));
        let tight = build(&feedback, 1_500);
        assert!(
            !tight.user.contains("A suite that worked well"),
            "examples go first"
        );
        assert!(
            tight.user.contains("Gt -> GtE"),
            "survivors stay while they fit"
        );
        assert!(tight.user.contains("return 1"), "the source always stays");
    }
}
