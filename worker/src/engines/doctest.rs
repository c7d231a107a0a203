//! The floor engine: turns the `>>>` examples in a module's docstrings into a pytest file,
//! runs it under coverage, and reports what passed. Later engines must beat it.

use std::path::PathBuf;
use std::time::Instant;

use serde::Deserialize;

use super::measure::{measured_output, mutation_in_time_left, MutationSettings};
use super::python::{find_python, helper_outcome, run_python, run_suite, Workspace};
use crate::engine::{Engine, EngineError, EngineFuture, EngineOutput, EngineRequest};
use crate::sandbox::{Limits, Sandbox};

const EXTRACT_SCRIPT: &str = include_str!("extract_doctests.py");
const TEST_FILE: &str = "test_generated_doctests.py";
/// Below this much time left, mutation testing is skipped (the score stays unmeasured).
const MIN_MUTATION_TIME: std::time::Duration = std::time::Duration::from_secs(4);

/// Doctest examples to pytest.
#[derive(Debug, Clone)]
pub struct DoctestEngine {
    sandbox: Sandbox,
}

impl DoctestEngine {
    pub fn new(sandbox: Sandbox) -> Self {
        Self { sandbox }
    }

    /// An engine on the given (or the default) interpreter with default limits.
    pub async fn probe(python: Option<PathBuf>) -> Self {
        Self::new(Sandbox::new(python.unwrap_or_else(find_python), Limits::default()).await)
    }
}

/// One `>>>` example as the extraction script reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Example {
    pub source: String,
    pub want: String,
    pub exception: Option<String>,
    pub expression: bool,
    pub literal: bool,
    pub fuzzy: bool,
    pub lineno: u32,
}

/// The examples of one docstring, which share a namespace.
#[derive(Debug, Clone, Deserialize)]
pub struct DocTest {
    pub name: String,
    pub examples: Vec<Example>,
}

impl Engine for DoctestEngine {
    fn name(&self) -> &str {
        "doctest"
    }

    fn generate<'a>(&'a self, request: EngineRequest<'a>) -> EngineFuture<'a> {
        Box::pin(async move {
            let deadline = Instant::now() + request.time_budget;
            let job = &request.job.job;
            let workspace = Workspace::new(&job.module_name, &job.source)?;
            workspace.write("qefleet_extract_doctests.py", EXTRACT_SCRIPT)?;
            let extracted = run_python(
                &self.sandbox,
                &workspace,
                &["qefleet_extract_doctests.py", &job.module_name],
                deadline.saturating_duration_since(Instant::now()),
            )
            .await?;
            helper_outcome(&extracted, "doctest extraction")?;
            let mut tests: Vec<DocTest> = serde_json::from_str(&extracted.stdout).map_err(|e| {
                EngineError::Transient(format!("unreadable extraction output: {e}"))
            })?;
            if let Some(target) = &job.target_function {
                let suffix = format!(".{target}");
                tests.retain(|t| t.name.ends_with(&suffix));
            }
            if tests.is_empty() {
                return Err(EngineError::JobFailed(format!(
                    "no doctest examples (>>> lines) found in {}{}: the doctest engine only turns existing examples into tests",
                    job.module_name,
                    job.target_function
                        .as_ref()
                        .map(|t| format!(" for {t}"))
                        .unwrap_or_default()
                )));
            }
            let test_file = render_pytest(&job.module_name, &tests);
            workspace.write(TEST_FILE, &test_file)?;
            let run = run_suite(&self.sandbox, &workspace, TEST_FILE, deadline).await?;
            let mutation_score = mutation_in_time_left(
                &self.sandbox,
                &workspace,
                &job.module_name,
                TEST_FILE,
                &run,
                deadline,
                MutationSettings {
                    min_time_left: MIN_MUTATION_TIME,
                    ..MutationSettings::default()
                },
            )
            .await?
            .and_then(|m| m.score());
            Ok(EngineOutput {
                refinement_rounds: 1,
                ..measured_output(test_file, &run, mutation_score)
            })
        })
    }
}

fn test_name(doctest_name: &str, used: &mut Vec<String>) -> String {
    let base: String = doctest_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("test_{}", base.trim_matches('_'));
    let mut n = 2;
    while used.contains(&name) {
        name = format!("test_{}_{n}", base.trim_matches('_'));
        n += 1;
    }
    used.push(name.clone());
    name
}

fn indent(code: &str, by: &str) -> String {
    code.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{by}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn py_str(s: &str) -> String {
    // JSON string syntax is valid Python string syntax for these characters.
    serde_json::to_string(s).unwrap_or_else(|_| "''".to_string())
}

/// Renders the pytest file: one test per docstring, one statement or assertion per example.
pub fn render_pytest(module_name: &str, tests: &[DocTest]) -> String {
    let mut out = format!(
        "\"\"\"Tests generated by qefleet's doctest engine from the examples in {module_name}'s docstrings.\"\"\"\n\
         import pytest\n\
         import {module_name}\n\n\
         # Doctest examples run in the module's namespace; give these tests the same names.\n\
         globals().update({{k: v for k, v in vars({module_name}).items() if not k.startswith(\"__\")}})\n"
    );
    let mut used = Vec::new();
    for test in tests {
        let needs_capsys = test
            .examples
            .iter()
            .any(|e| !e.want.is_empty() && e.exception.is_none() && !e.expression);
        let name = test_name(&test.name, &mut used);
        let params = if needs_capsys { "capsys" } else { "" };
        out.push_str(&format!(
            "\n\ndef {name}({params}):\n    \"\"\"Examples of {}.\"\"\"\n",
            test.name
        ));
        for ex in &test.examples {
            out.push_str(&format!("    # line {}\n", ex.lineno));
            let body = render_example(ex, needs_capsys);
            out.push_str(&indent(&body, "    "));
            out.push('\n');
        }
    }
    out
}

fn render_example(ex: &Example, capsys: bool) -> String {
    let source = ex.source.as_str();
    if let Some(exception) = &ex.exception {
        return format!(
            "with pytest.raises({exception}):\n{}",
            indent(source, "    ")
        );
    }
    if ex.want.is_empty() || ex.fuzzy {
        return source.to_string();
    }
    if ex.expression {
        let expr = source.trim();
        if ex.literal {
            format!("assert ({expr}) == {}", ex.want.trim())
        } else {
            format!(
                "assert repr({expr}) == {}",
                py_str(ex.want.trim_end_matches('\n'))
            )
        }
    } else if capsys {
        format!(
            "capsys.readouterr()\n{source}\nassert capsys.readouterr().out == {}",
            py_str(&ex.want)
        )
    } else {
        source.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(source: &str, want: &str) -> Example {
        Example {
            source: source.into(),
            want: want.into(),
            exception: None,
            expression: true,
            literal: true,
            fuzzy: false,
            lineno: 3,
        }
    }

    #[test]
    fn renders_literal_repr_exception_and_print_examples() {
        let tests = vec![DocTest {
            name: "calc.add".into(),
            examples: vec![
                example("add(1, 2)", "3\n"),
                Example {
                    literal: false,
                    ..example("Point(1, 2)", "Point(x=1, y=2)\n")
                },
                Example {
                    exception: Some("ValueError".into()),
                    ..example("add(None, 1)", "")
                },
                Example {
                    expression: false,
                    literal: false,
                    ..example("print('hi')", "hi\n")
                },
            ],
        }];
        let file = render_pytest("calc", &tests);
        assert!(file.contains("import calc\n"));
        assert!(file.contains("def test_calc_add(capsys):"));
        assert!(file.contains("    assert (add(1, 2)) == 3\n"));
        assert!(file.contains("    assert repr(Point(1, 2)) == \"Point(x=1, y=2)\"\n"));
        assert!(file.contains("    with pytest.raises(ValueError):\n        add(None, 1)\n"));
        assert!(file.contains("    assert capsys.readouterr().out == \"hi\\n\"\n"));
    }

    #[test]
    fn test_names_stay_unique() {
        let mut used = Vec::new();
        assert_eq!(test_name("m.f", &mut used), "test_m_f");
        assert_eq!(test_name("m.f", &mut used), "test_m_f_2");
    }
}
