//! Candidate inputs: values typical for each parameter's annotation, its default, the
//! literals the body compares against (and their neighbours), combined one factor at a
//! time and then at random (seeded), into call expressions.

use super::targets::{operator_inputs, operator_syntax, Owner, Param, Target};

/// One call to probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Index of the target in the target list.
    pub target: usize,
    /// Positional arguments as Python source.
    pub args: Vec<String>,
    /// Keyword-only arguments.
    pub kwargs: Vec<(String, String)>,
    /// The whole expression, e.g. `calc.add(1, 2)` or, for a method, `obj.push(1)`.
    pub expr: String,
    /// Statements run before `expr`: for a method, building the instance `obj` and the
    /// calls that bring it into the state the method is tested in.
    pub setup: Vec<String>,
    /// Expressions observing the instance after the call (`obj.draw()`, `len(obj)`):
    /// what a method that returns nothing did shows through them.
    pub observers: Vec<String>,
}

impl Call {
    /// What identifies a call: its setup and expression.
    pub fn key(&self) -> String {
        let mut key = self.setup.join("\n");
        key.push('\n');
        key.push_str(&self.expr);
        key
    }
}

/// The name generated tests give the instance a method is called on.
pub const INSTANCE: &str = "obj";

const ANY: [&str; 10] = [
    "1",
    "0",
    "-1",
    "\"a\"",
    "\"\"",
    "[1, 2, 3]",
    "[]",
    "None",
    "2.5",
    "True",
];

fn typed_pool(annotation: &str) -> Option<Vec<&'static str>> {
    let a = annotation.replace(' ', "");
    let base = a
        .split(['[', '|'])
        .next()
        .unwrap_or("")
        .rsplit('.')
        .next()
        .unwrap_or("");
    let elem_str = a.contains("[str]") || a.contains("[str,");
    Some(match base {
        "int" => vec!["1", "0", "-1", "2", "7", "100"],
        "float" => vec!["1.5", "0.0", "-2.5", "100.0", "1"],
        // None last: what a function does with a value of the wrong type (its
        // `except TypeError` paths) is behaviour too.
        "str" => vec![
            "\"a\"",
            "\"\"",
            "\"hello world\"",
            "\"ABC\"",
            "\" padded \"",
            "None",
        ],
        "bool" => vec!["True", "False"],
        "list" | "List" | "Sequence" | "Iterable" | "Collection" if elem_str => {
            vec!["[\"a\", \"b\"]", "[]", "[\"b\", \"a\", \"b\"]"]
        }
        "list" | "List" | "Sequence" | "Iterable" | "Collection" => {
            vec!["[1, 2, 3]", "[]", "[3, 1, 2]", "[-1, 0]"]
        }
        "dict" | "Dict" | "Mapping" => vec![
            "{\"a\": 1, \"b\": 2}",
            "{}",
            "{\"a\": {\"b\": [1, 2], \"c\": \"x\"}}",
        ],
        "tuple" | "Tuple" => vec!["(1, 2)", "()"],
        "set" | "Set" | "frozenset" => vec!["{1, 2}", "set()"],
        "bytes" => vec!["b\"abc\"", "b\"\""],
        _ => return None,
    })
}

/// The type of a default written as a literal (`0` int, `'utf-8'` str, `[]` list...).
fn default_type(default: &str) -> Option<&'static str> {
    let d = default.trim();
    Some(match d.chars().next()? {
        '"' | '\'' => "str",
        '[' => "list",
        '{' if d == "{}" || d.contains(':') => "dict",
        '(' => "tuple",
        _ if d == "True" || d == "False" => "bool",
        _ if d.parse::<i64>().is_ok() => "int",
        _ if d.parse::<f64>().is_ok() => "float",
        _ => return None,
    })
}

/// Typical values for a parameter known only by its name: the conventions of Python
/// APIs (`text`, `n`, `items`, `func`, `xml_input`...).
fn name_hint(name: &str) -> Option<Vec<&'static str>> {
    let n = name.trim_start_matches('_').to_ascii_lowercase();
    let has = |parts: &[&str]| parts.iter().any(|p| n.contains(p));
    let is = |names: &[&str]| names.contains(&n.as_str());
    if has(&["xml", "html"]) {
        return Some(vec![
            "'<a><b>1</b><c x=\"2\">text</c></a>'",
            "'<a/>'",
            "'<root><item>1</item><item>2</item></root>'",
            "'<r xmlns:n=\"urn:a\"><n:x n:k=\"1\">t</n:x><!-- note --><y/></r>'",
        ]);
    }
    if is(&[
        "file_obj",
        "fileobj",
        "fobj",
        "fp",
        "stream",
        "infile",
        "buf",
        "buffer",
        "file_like",
        "readable",
    ]) {
        return Some(vec![
            "io.StringIO('{\"a\": 1}\\n{\"b\": [2, 3]}\\n')",
            "io.BytesIO(b'line one\\nline two\\n')",
            "io.StringIO('')",
        ]);
    }
    if is(&["td", "delta", "timedelta", "duration", "interval"]) {
        return Some(vec![
            "datetime.timedelta(days=1, seconds=30)",
            "datetime.timedelta(0)",
            "datetime.timedelta(seconds=-90)",
        ]);
    }
    if is(&[
        "dt", "date", "datetime", "when", "moment", "day_of", "then", "other",
    ]) || n.ends_with("_date")
        || n.ends_with("_dt")
    {
        return Some(vec![
            "datetime.datetime(2020, 1, 2, 3, 4, 5)",
            "datetime.date(2022, 1, 1)",
            "datetime.datetime(1999, 12, 31, 23, 59, 59)",
        ]);
    }
    if is(&[
        "doc",
        "docstring",
        "usage",
        "help_text",
        "help",
        "description",
        "document",
    ]) {
        // Multi-line text in the shape of a command's usage message.
        return Some(vec![
            "'Usage: prog [-v] <name>\\n\\nOptions:\\n  -v --verbose  Say more.\\n'",
            "'Usage:\\n  prog add <x> <y>\\n  prog (-h | --help)\\n'",
            "'Usage: prog [options] <file>...\\n\\nOptions:\\n  -o FILE  Output [default: out.txt].\\n  -q --quiet  Say less.\\n'",
            "'A title\\n\\nSome text.\\n'",
        ]);
    }
    if is(&["argv", "cmdline", "command_line", "arguments"]) {
        // Command lines, as lists of words and as one string, in the shapes of the
        // usage texts above: a flag and a value, a value, a subcommand, help.
        return Some(vec![
            "['-v', 'bob']",
            "['bob']",
            "['add', '1', '2']",
            "['-o', 'x', 'a', 'b']",
            "['--help']",
            "[]",
            "'-v bob'",
        ]);
    }
    if has(&["json"]) {
        return Some(vec!["'{\"a\": 1, \"b\": [1, 2]}'", "'[]'", "'\"x\"'"]);
    }
    if is(&[
        "field_names",
        "fields",
        "names",
        "columns",
        "keys",
        "headers",
    ]) {
        return Some(vec!["['x', 'y']", "'x y'", "[]"]);
    }
    if is(&[
        "func",
        "fn",
        "f",
        "function",
        "callback",
        "pred",
        "predicate",
        "callable",
        "transform",
    ]) {
        // Builtins taking one argument, one taking none or one (`int()` is 0), a
        // callable answering None (falsy, a predicate rejecting everything) and one
        // answering a float whatever it is given.
        return Some(vec![
            "str",
            "len",
            "bool",
            "lambda *a, **k: None",
            "int",
            "lambda *a, **k: 1.5",
        ]);
    }
    if has(&["fmt", "format", "fstr", "template"]) || is(&["spec", "fspec"]) {
        // Format strings (bracket and percent style) and format specs.
        return Some(vec![
            "'{} and {:d}'",
            "'{name!r:>10} {0}'",
            "'{0.real} {x[0]}'",
            "'{{literal}} {}'",
            "'plain'",
            "'.2f'",
            "'>8'",
            "'d'",
            "'%s is %d'",
            "'%Y-%m-%d'",
        ]);
    }
    if is(&["encoding", "errors"]) {
        return Some(vec!["'utf-8'", "'ascii'", "'latin-1'"]);
    }
    if n.starts_with("is_")
        || n.starts_with("has_")
        || n.starts_with("allow")
        || n.starts_with("use_")
        || is(&[
            "strict",
            "verbose",
            "reverse",
            "recursive",
            "force",
            "quiet",
            "flag",
            "enabled",
            "ignore_case",
        ])
    {
        return typed_pool("bool");
    }
    if has(&[
        "count",
        "size",
        "length",
        "width",
        "height",
        "index",
        "limit",
        "num",
        "depth",
        "level",
        "precision",
        "digits",
        "places",
        "times",
        "offset",
        "port",
    ]) || is(&[
        "n", "i", "j", "k", "x", "y", "start", "stop", "step", "base", "max", "min", "idx", "pos",
        "year", "month", "day",
    ]) {
        return typed_pool("int");
    }
    if has(&[
        "text", "name", "string", "word", "prefix", "suffix", "sep", "delim", "label", "title",
        "message", "msg", "char", "line", "pattern", "url", "host", "code", "token", "path",
        "file",
    ]) || is(&["s", "st", "value_str", "word", "key", "tag"])
    {
        return typed_pool("str");
    }
    if has(&[
        "items", "list", "seq", "values", "elements", "iterable", "lst", "array", "args",
    ]) || is(&["xs", "data", "iter", "it", "vals", "nums", "numbers"])
    {
        return typed_pool("list");
    }
    if has(&[
        "dict", "mapping", "map", "kwargs", "options", "config", "attrs", "params",
    ]) || is(&["d", "dct", "obj_dict"])
    {
        return typed_pool("dict");
    }
    None
}

/// Candidate values for a parameter, most typical first, at most `cap`.
pub fn pool(param: &Param, literals: &[String], cap: usize) -> Vec<String> {
    if param.name.starts_with("**") {
        return vec![String::new(), "key=1".into(), "a=\"x\", b=2".into()];
    }
    if param.name.starts_with('*') {
        let mut out = vec![
            "1".to_string(),
            String::new(),
            "1, 2".into(),
            "\"a\", 3".into(),
        ];
        out.extend(literals.iter().take(4).cloned());
        out.truncate(cap.max(4));
        return out;
    }
    let annotation = param.annotation.as_deref().unwrap_or("");
    let optional = annotation.contains("Optional") || annotation.contains("None");
    let inner = match annotation
        .strip_prefix("Optional[")
        .or_else(|| annotation.strip_prefix("typing.Optional["))
    {
        Some(rest) => rest.strip_suffix(']').unwrap_or(rest),
        None => annotation.split('|').next().unwrap_or(""),
    };
    let typed = typed_pool(inner);
    let mut out: Vec<String> = Vec::new();
    if let Some(d) = &param.default {
        out.push(d.clone());
    }
    out.extend(mappings(&param.keys, literals));
    // Without an annotation, the default's type, then the parameter's name say what is
    // typical; a few values of other types stay in the pool for what they reveal.
    let hinted = match &typed {
        Some(_) => None,
        None => param
            .default
            .as_deref()
            .and_then(default_type)
            .and_then(typed_pool)
            .or_else(|| name_hint(&param.name)),
    };
    let base: Vec<&str> = match (&typed, &hinted) {
        (Some(t), _) => t.clone(),
        (None, Some(h)) => h.iter().copied().chain(["1", "\"a\""]).collect(),
        (None, None) => ANY.to_vec(),
    };
    out.extend(base.iter().map(|s| s.to_string()));
    let typed = typed.or(hinted);
    for lit in literals {
        let is_number = lit.parse::<f64>().is_ok();
        let fits = match typed.as_ref().map(|t| t[0]) {
            None => true,
            Some("1") => lit.parse::<i64>().is_ok(),
            Some("1.5") => is_number,
            Some("\"a\"") => lit.starts_with(['"', '\'']),
            _ => false,
        };
        if !fits {
            continue;
        }
        out.push(lit.clone());
        if let Ok(n) = lit.parse::<i64>() {
            out.push((n - 1).to_string());
            out.push((n + 1).to_string());
        }
    }
    if optional {
        out.push("None".into());
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|v| seen.insert(v.clone()));
    out.truncate(cap);
    out
}

/// Mappings with the keys a body looks up in a parameter: every key at its `get` default
/// (`'1'` without one), then one key at a time at each of a few values (the body's own
/// string literals first, then `'1'`, `'0'`, `None`). At most 12.
fn mappings(keys: &[(String, Option<String>)], literals: &[String]) -> Vec<String> {
    if keys.is_empty() {
        return Vec::new();
    }
    let render = |values: &[String]| {
        let items: Vec<String> = keys
            .iter()
            .zip(values)
            .map(|((k, _), v)| format!("{k}: {v}"))
            .collect();
        format!("{{{}}}", items.join(", "))
    };
    let base: Vec<String> = keys
        .iter()
        .map(|(_, d)| d.clone().unwrap_or_else(|| "'1'".into()))
        .collect();
    let mut values: Vec<String> = literals
        .iter()
        .filter(|l| l.starts_with(['"', '\'']) && !keys.iter().any(|(k, _)| k == *l))
        .take(4)
        .cloned()
        .collect();
    values.extend(["'1'", "'0'", "None"].map(String::from));
    let mut out = vec![render(&base)];
    for i in 0..keys.len() {
        for v in &values {
            let mut c = base.clone();
            c[i] = v.clone();
            let d = render(&c);
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out.truncate(12);
    out
}

/// A tiny deterministic generator (seeded), so a job's tests do not change between runs.
#[derive(Debug, Clone)]
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(
            seed.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

/// Positional and keyword arguments for these values. A parameter given its own default
/// is left out (the call reads as a user writes it, and a default that is an expression,
/// `expat=expat`, is never copied where it does not resolve); positional parameters after
/// one left out are passed by keyword.
fn arg_list(params: &[Param], values: &[String]) -> (Vec<String>, Vec<(String, String)>) {
    let mut args = Vec::new();
    let mut kwargs = Vec::new();
    // Values for `*args` need every positional parameter before them.
    let star_args = params
        .iter()
        .zip(values)
        .any(|(p, v)| p.name.starts_with('*') && !p.name.starts_with("**") && !v.is_empty());
    let mut by_keyword = false;
    for (p, v) in params.iter().zip(values) {
        let is_default = p.default.as_deref() == Some(v.as_str());
        if p.name.starts_with("**") {
            if !v.is_empty() {
                kwargs.push((String::new(), v.clone()));
            }
        } else if p.name.starts_with('*') {
            if !v.is_empty() {
                args.push(v.clone());
            }
        } else if p.keyword_only {
            if !is_default {
                kwargs.push((p.name.clone(), v.clone()));
            }
        } else if p.positional_only || star_args {
            args.push(v.clone());
        } else if is_default {
            by_keyword = true;
        } else if by_keyword {
            kwargs.push((p.name.clone(), v.clone()));
        } else {
            args.push(v.clone());
        }
    }
    (args, kwargs)
}

/// `obj = alias.Class(values...)`.
fn constructor(alias: &str, class: &str, init: &[Param], values: &[String]) -> String {
    format!("{INSTANCE} = {}", construct(alias, class, init, values))
}

/// `alias.Class(values...)`.
fn construct(alias: &str, class: &str, init: &[Param], values: &[String]) -> String {
    let (a, k) = arg_list(init, values);
    format!("{alias}.{class}({})", render_args(&a, &k))
}

impl Instance<'_> {
    /// Two instances of the class as expressions: built from the constructor's typical
    /// values, and from the next value of each parameter's pool.
    fn instances(&self, alias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for pick in 0..2 {
            let values: Vec<String> = self
                .init_pools
                .iter()
                .map(|p| {
                    p.get(pick)
                        .or(p.first())
                        .cloned()
                        .unwrap_or_else(|| "1".into())
                })
                .collect();
            let expr = construct(alias, self.class, self.init, &values);
            if !out.contains(&expr) {
                out.push(expr);
            }
        }
        out
    }
}

fn render_args(args: &[String], kwargs: &[(String, String)]) -> String {
    args.iter()
        .cloned()
        .chain(kwargs.iter().map(|(k, v)| {
            if k.is_empty() {
                v.clone()
            } else {
                format!("{k}={v}")
            }
        }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The call expression for a target with these arguments; `alias` names the module, a
/// method is called on [`INSTANCE`].
pub fn call_expr(
    alias: &str,
    target: &Target,
    args: &[String],
    kwargs: &[(String, String)],
) -> String {
    let callee = match &target.owner {
        Owner::Module => format!("{alias}.{}", target.name),
        Owner::Class { class } => format!("{alias}.{class}.{}", target.name),
        Owner::Instance { .. } => format!("{INSTANCE}.{}", target.name),
    };
    if let (Owner::Instance { .. }, Some(syntax)) = (&target.owner, operator_syntax(&target.name)) {
        if syntax.contains("{*}") {
            return syntax
                .replace("{0}", INSTANCE)
                .replace("{*}", &render_args(args, kwargs));
        }
        let arg = args.first().or(kwargs.first().map(|(_, v)| v));
        match arg {
            Some(arg) => return syntax.replace("{0}", INSTANCE).replace("{1}", arg),
            None if !syntax.contains("{1}") => return syntax.replace("{0}", INSTANCE),
            None => {}
        }
    }
    let call = format!("{callee}({})", render_args(args, kwargs));
    match (target.is_async, target.is_generator) {
        (true, _) => format!("asyncio.run({call})"),
        (false, true) => format!("list({call})"),
        _ => call,
    }
}

/// Calls for every target: the typical call, each parameter varied alone over its pool,
/// then random combinations, up to `per_target` calls each. `focus` values are added to
/// every pool (literals from lines the suite does not cover yet); `samples` (strings the
/// module's patterns match) are tried as each target's first argument.
pub fn synthesize(
    alias: &str,
    targets: &[Target],
    per_target: usize,
    seed: u64,
    focus: &[String],
    samples: &[String],
) -> Vec<Call> {
    let mut rng = Lcg::new(seed);
    // What building each method's instance takes, once per target.
    let instances: Vec<Option<Instance>> =
        targets.iter().map(|t| Instance::of(t, targets)).collect();
    let all_pools: Vec<Vec<Vec<String>>> = targets
        .iter()
        .enumerate()
        .map(|(index, target)| {
            let mut literals: Vec<String> =
                target.literals.iter().map(|(_, l)| l.clone()).collect();
            literals.extend(focus.iter().cloned());
            let mut pools: Vec<Vec<String>> = target
                .params
                .iter()
                .map(|p| {
                    let mut values = pool(p, &literals, 14);
                    for v in operator_inputs(&target.name) {
                        if !values.iter().any(|x| x == v) {
                            values.push((*v).into());
                        }
                    }
                    // `other` of a method (`__eq__`, `union`) is most often another
                    // instance of the class.
                    if let (Owner::Instance { class, .. }, Some(instance)) =
                        (&target.owner, &instances[index])
                    {
                        let same_class = p.name == "other"
                            || p.annotation
                                .as_deref()
                                .is_some_and(|a| a.trim_matches(['"', '\'']) == class.as_str());
                        if !same_class {
                            return values;
                        }
                        for (i, expr) in instance.instances(alias).into_iter().enumerate() {
                            values.retain(|v| v != &expr);
                            values.insert(i, expr);
                        }
                    }
                    values
                })
                .collect();
            // Arguments of the module's own doctest examples are inputs it documents.
            for example in &target.examples {
                for (i, value) in example.args.iter().enumerate() {
                    let Some((param, pool)) = target.params.get(i).zip(pools.get_mut(i)) else {
                        break;
                    };
                    if param.name.starts_with('*') {
                        break;
                    }
                    if !pool.contains(value) {
                        pool.insert(1.min(pool.len()), value.clone());
                    }
                    for v in variants(value) {
                        if !pool.contains(&v) {
                            pool.push(v);
                        }
                    }
                }
            }
            pools
        })
        .collect();
    let mut calls = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        let pools = &all_pools[index];
        let typical: Vec<String> = pools.iter().map(|p| p[0].clone()).collect();
        let mut combos: Vec<Vec<String>> = vec![typical.clone()];
        // The module's documented values, each alone in the typical call, are kept
        // whatever the sampling below drops.
        for example in &target.examples {
            for (i, value) in example.args.iter().enumerate().take(pools.len()) {
                let mut c = typical.clone();
                c[i] = value.clone();
                if !combos.contains(&c) && !target.params[i].name.starts_with('*') {
                    combos.push(c);
                }
            }
        }
        let pinned = combos.len();
        for (i, values) in pools.iter().enumerate() {
            for v in values.iter().skip(1) {
                let mut c = typical.clone();
                c[i] = v.clone();
                if !combos.contains(&c) {
                    combos.push(c);
                }
            }
        }
        let space: usize = pools.iter().map(Vec::len).product::<usize>().max(1);
        let mut attempts = 0;
        while combos.len() < per_target && attempts < per_target * 4 && space > combos.len() {
            attempts += 1;
            let c: Vec<String> = pools
                .iter()
                .map(|p| p[rng.below(p.len())].clone())
                .collect();
            if !combos.contains(&c) {
                combos.push(c);
            }
        }
        if combos.len() > per_target {
            // Keep the typical and documented calls, sample the rest.
            let mut kept: Vec<Vec<String>> = combos.drain(..pinned.min(per_target)).collect();
            while kept.len() < per_target && !combos.is_empty() {
                kept.push(combos.remove(rng.below(combos.len())));
            }
            combos = kept;
        }
        let instance = &instances[index];
        let call = |args: Vec<String>, kwargs: Vec<(String, String)>, n: usize, rng: &mut Lcg| {
            let setup = instance
                .as_ref()
                .map(|i| i.setup(alias, targets, &all_pools, n, rng))
                .unwrap_or_default();
            Call {
                target: index,
                expr: call_expr(alias, target, &args, &kwargs),
                args,
                kwargs,
                setup,
                observers: instance
                    .as_ref()
                    .map(|i| i.observers(alias, targets, index))
                    .unwrap_or_default(),
            }
        };
        let mut own: Vec<Call> = Vec::new();
        // The documented calls themselves, as written.
        for example in &target.examples {
            own.push(call(
                example.args.clone(),
                example.kwargs.clone(),
                0,
                &mut rng,
            ));
        }
        for (n, values) in combos.into_iter().enumerate() {
            let (args, kwargs) = arg_list(&target.params, &values);
            own.push(call(args, kwargs, n, &mut rng));
        }
        // Entries of the module's tables the target reads (`pluralize('child')` for
        // `_IRREGULAR = {'child': 'children', ...}`) and strings its patterns match,
        // spread over them, shifted each round: a table entry is a case of its own that
        // no other input reaches.
        if let Some((p, values)) = table_inputs(target, pools, samples) {
            let k = (per_target / 2).max(1);
            let step = (values.len() / k).max(1);
            let offset = (seed as usize * step / 3) % step;
            for v in values.iter().skip(offset).step_by(step).take(k) {
                let mut c = typical.clone();
                c[p] = (*v).clone();
                let (args, kwargs) = arg_list(&target.params, &c);
                own.push(call(args, kwargs, 0, &mut rng));
            }
        }
        // A command-line entry point, run with command lines.
        if let Some(flags) = &target.command_line {
            for argv in command_lines(alias, flags, focus) {
                own.push(Call {
                    setup: vec![format!("sys.argv = {argv}")],
                    ..call(Vec::new(), Vec::new(), 0, &mut rng)
                });
            }
        }
        // The same arguments on instances in other states: the state a method sees is
        // an input as much as its arguments are.
        if let Some(instance) = &instance {
            let states = own.len();
            for _ in 0..round_extra(per_target) {
                let base = own[rng.below(states)].clone();
                let setup = instance.setup(alias, targets, &all_pools, 1, &mut rng);
                if setup.len() > 1 {
                    own.push(Call { setup, ..base });
                }
            }
        }
        calls.extend(own);
    }
    calls
}

/// Near misses of a documented string (`'2007-01-25T12:00:00Z'`): each of its first three
/// runs of digits as nines (`'2007-99-25T12:00:00Z'`, an invalid month), its first half,
/// and all but its last character. Inputs the module almost accepts reach its checks.
fn variants(value: &str) -> Vec<String> {
    let Some(quote) = value.chars().next().filter(|c| *c == '\'' || *c == '"') else {
        return Vec::new();
    };
    if value.len() < 2 || !value.ends_with(quote) {
        return Vec::new();
    }
    let inner = &value[1..value.len() - 1];
    if inner.chars().count() < 4 || inner.contains('\\') {
        return Vec::new();
    }
    let quoted = |s: &str| format!("{quote}{s}{quote}");
    let mut out = Vec::new();
    let chars: Vec<char> = inner.chars().collect();
    let mut i = 0;
    let mut runs = 0;
    while i < chars.len() && runs < 3 {
        if chars[i].is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let mut c = chars.clone();
            c[start..i].iter_mut().for_each(|d| *d = '9');
            let v: String = c.into_iter().collect();
            if v != inner {
                out.push(quoted(&v));
            }
            runs += 1;
        } else {
            i += 1;
        }
    }
    out.push(quoted(&chars[..chars.len() / 2].iter().collect::<String>()));
    out.push(quoted(&chars[..chars.len() - 1].iter().collect::<String>()));
    out
}

/// The first named parameter of `target` and the entries of the tables it reads, then
/// `samples`, that fit it (strings where its pool has strings, numbers where it has
/// numbers).
fn table_inputs<'t>(
    target: &'t Target,
    pools: &[Vec<String>],
    samples: &'t [String],
) -> Option<(usize, Vec<&'t String>)> {
    let p = target
        .params
        .iter()
        .position(|p| !p.name.starts_with('*'))?;
    let quoted = |v: &str| v.starts_with(['"', '\'']);
    let number = |v: &str| v.parse::<f64>().is_ok();
    let takes_str = pools[p].iter().any(|v| quoted(v));
    let takes_number = pools[p].iter().any(|v| number(v));
    let values: Vec<&String> = target
        .tables
        .values
        .iter()
        .chain(samples)
        .filter(|v| (takes_str && quoted(v)) || (takes_number && number(v)))
        .filter(|v| !pools[p].contains(v))
        .collect();
    (!values.is_empty()).then_some((p, values))
}

/// Command lines (`['prog', '-r', 'XII']` as Python source) for an entry point: none,
/// `--help`, a value alone, and each flag (at most three) before a value. Values are
/// `'1'`, `'12'` and the strings the module returned in earlier rounds (`focus`).
fn command_lines(prog: &str, flags: &[String], focus: &[String]) -> Vec<String> {
    let mut values: Vec<String> = vec!["'1'".into(), "'12'".into()];
    for v in focus {
        let token = if v.starts_with(['\'', '"']) {
            v.clone()
        } else if v.parse::<f64>().is_ok() {
            format!("'{v}'")
        } else {
            continue;
        };
        if !values.contains(&token) && values.len() < 5 {
            values.push(token);
        }
    }
    let line = |args: &[&str]| {
        let mut all = vec![format!("'{prog}'")];
        all.extend(args.iter().map(|a| a.to_string()));
        format!("[{}]", all.join(", "))
    };
    let mut out = vec![line(&[]), line(&["'--help'"])];
    for v in &values {
        out.push(line(&[v]));
    }
    for f in flags.iter().take(3) {
        for v in values.iter().take(3) {
            out.push(line(&[f, v]));
        }
    }
    out
}

/// How many extra instance states each method is tried in.
fn round_extra(per_target: usize) -> usize {
    per_target / 3
}

/// What building instances of a method's class takes, computed once per target: the
/// constructor's parameters and their pools, and the class's methods (targets).
struct Instance<'a> {
    class: &'a str,
    init: &'a [Param],
    init_pools: Vec<Vec<String>>,
    siblings: Vec<usize>,
    /// Methods that read the instance's state without arguments.
    inspectors: Vec<usize>,
}

/// Most inspectors evaluated after a call.
const MAX_OBSERVERS: usize = 3;

/// A method that reads the instance without arguments and, by its name, changes nothing:
/// `len(obj)`, `list(obj)`, `str(obj)`, `obj.draw()`, `obj.as_list()`, `obj.get_width()`.
fn is_inspector(target: &Target) -> bool {
    let params_required = target
        .params
        .iter()
        .any(|p| p.default.is_none() && !p.name.starts_with('*'));
    if params_required || target.is_async || target.is_generator {
        return false;
    }
    if operator_syntax(&target.name).is_some() {
        return matches!(
            target.name.as_str(),
            "__len__" | "__iter__" | "__str__" | "__repr__" | "__bool__"
        );
    }
    let n = target.name.as_str();
    ["get", "as_", "to_", "is_", "has_"]
        .iter()
        .any(|p| n.starts_with(p))
        || matches!(
            n,
            "draw"
                | "render"
                | "dump"
                | "dumps"
                | "count"
                | "size"
                | "keys"
                | "values"
                | "items"
                | "total"
                | "summary"
        )
}

impl<'a> Instance<'a> {
    /// `None` for a target that is not a method called on an instance.
    fn of(target: &'a Target, targets: &[Target]) -> Option<Self> {
        let Owner::Instance { class, init } = &target.owner else {
            return None;
        };
        Some(Self {
            class,
            init,
            init_pools: init.iter().map(|p| pool(p, &[], 6)).collect(),
            inspectors: targets
                .iter()
                .enumerate()
                .filter(|(_, t)| {
                    matches!(&t.owner, Owner::Instance { class: c, .. } if c == class)
                        && is_inspector(t)
                })
                .map(|(i, _)| i)
                .collect(),
            siblings: targets
                .iter()
                .enumerate()
                // Special methods query (`len(obj)`, `x in obj`): they bring no state.
                .filter(|(_, t)| {
                    matches!(&t.owner, Owner::Instance { class: c, .. } if c == class)
                        && operator_syntax(&t.name).is_none()
                })
                .map(|(i, _)| i)
                .collect(),
        })
    }

    /// The inspectors to evaluate after a call of target `called` (not itself).
    fn observers(&self, alias: &str, targets: &[Target], called: usize) -> Vec<String> {
        self.inspectors
            .iter()
            .filter(|&&i| i != called)
            .take(MAX_OBSERVERS)
            .map(|&i| call_expr(alias, &targets[i], &[], &[]))
            .collect()
    }

    /// Statements building the instance for call number `n` of a method: the typical
    /// constructor for the first, then constructors with sampled arguments, followed by up
    /// to two calls of the class's methods (arguments sampled from their pools).
    fn setup(
        &self,
        alias: &str,
        targets: &[Target],
        pools: &[Vec<Vec<String>>],
        n: usize,
        rng: &mut Lcg,
    ) -> Vec<String> {
        let values: Vec<String> = self
            .init_pools
            .iter()
            .map(|p| {
                if n == 0 || rng.below(2) == 0 {
                    p.first().cloned().unwrap_or_else(|| "1".into())
                } else {
                    p[rng.below(p.len())].clone()
                }
            })
            .collect();
        let mut setup = vec![constructor(alias, self.class, self.init, &values)];
        if n == 0 || self.siblings.is_empty() {
            return setup;
        }
        for _ in 0..rng.below(3) {
            let i = self.siblings[rng.below(self.siblings.len())];
            let values: Vec<String> = pools[i]
                .iter()
                .map(|p| p[rng.below(p.len())].clone())
                .collect();
            let (args, kwargs) = arg_list(&targets[i].params, &values);
            setup.push(call_expr(alias, &targets[i], &args, &kwargs));
        }
        setup
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::generator::targets::find_targets;

    #[test]
    fn pools_follow_annotations_defaults_and_literals() {
        let p = Param {
            name: "n".into(),
            annotation: Some("int".into()),
            default: Some("5".into()),
            keyword_only: false,
            positional_only: false,
            keys: vec![],
        };
        let pool = pool(&p, &["10".into(), "\"x\"".into()], 20);
        assert_eq!(pool[0], "5");
        assert!(
            pool.contains(&"10".into())
                && pool.contains(&"9".into())
                && pool.contains(&"11".into())
        );
        assert!(!pool.contains(&"\"x\"".into()), "a str literal is no int");
        let opt = Param {
            name: "s".into(),
            annotation: Some("Optional[str]".into()),
            default: None,
            keyword_only: false,
            positional_only: false,
            keys: vec![],
        };
        let opt_pool = super::pool(&opt, &[], 20);
        assert_eq!(opt_pool[0], "\"a\"");
        assert!(opt_pool.contains(&"None".into()));
    }

    #[test]
    fn doctest_examples_are_called_as_written_and_seed_the_pools() {
        let src = "def span(text, sep=','):\n    \"\"\">>> span('1-3', sep='-')\n    [1, 2, 3]\n    \"\"\"\n    return text.split(sep)\n";
        let targets = find_targets(src).expect("parses");
        let calls = synthesize("m", &targets, 12, 1, &[], &[]);
        let exprs: Vec<&str> = calls.iter().map(|c| c.expr.as_str()).collect();
        assert!(exprs.contains(&"m.span('1-3', sep='-')"), "{exprs:?}");
        assert!(
            calls
                .iter()
                .any(|c| c.args.first().map(String::as_str) == Some("'1-3'") && c.kwargs.is_empty()),
            "the example's argument joins the parameter's pool: {exprs:?}"
        );
    }

    #[test]
    fn a_parameter_the_body_looks_keys_up_in_gets_mappings_with_them() {
        let src = "def zone(matches, strict=False):\n    tz = matches.get('timezone', None)\n    if tz == 'Z':\n        return 0\n    if 'tz_sign' in matches:\n        return int(matches['tz_hour'])\n    return 1\n";
        let targets = find_targets(src).expect("parses");
        let keys: Vec<&str> = targets[0].params[0]
            .keys
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["'timezone'", "'tz_sign'", "'tz_hour'"]);
        assert!(targets[0].params[1].keys.is_empty());
        let literals: Vec<String> = targets[0].literals.iter().map(|(_, l)| l.clone()).collect();
        let values = pool(&targets[0].params[0], &literals, 14);
        assert_eq!(
            values[0],
            "{'timezone': None, 'tz_sign': '1', 'tz_hour': '1'}"
        );
        assert!(
            values.contains(&"{'timezone': 'Z', 'tz_sign': '1', 'tz_hour': '1'}".to_string()),
            "the body's own literal 'Z' is tried for a key: {values:?}"
        );
    }

    #[test]
    fn documented_strings_have_near_misses() {
        assert_eq!(
            variants("'2007-01-25'"),
            [
                "'9999-01-25'",
                "'2007-99-25'",
                "'2007-01-99'",
                "'2007-'",
                "'2007-01-2'"
            ]
        );
        assert_eq!(variants("\"abcd\""), ["\"ab\"", "\"abc\""]);
        for not_a_plain_string in ["'ab'", "12", "'", "'abcd\u{e9}", "'a\\nbcd'"] {
            assert!(
                variants(not_a_plain_string).is_empty(),
                "{not_a_plain_string}"
            );
        }
    }

    #[test]
    fn star_args_and_kwargs_get_raw_argument_text() {
        let targets = find_targets("def key(*args, **kwargs):\n    return args\n").expect("parses");
        let calls = synthesize("m", &targets, 20, 1, &[], &[]);
        let exprs: Vec<&str> = calls.iter().map(|c| c.expr.as_str()).collect();
        assert!(exprs.contains(&"m.key(1)"), "{exprs:?}");
        assert!(exprs.contains(&"m.key()"), "{exprs:?}");
        assert!(
            exprs.contains(&"m.key(1, 2, key=1)") || exprs.iter().any(|e| e.contains("key=1")),
            "{exprs:?}"
        );
    }

    #[test]
    fn calls_cover_each_parameter_and_respect_the_cap() {
        let src = "def clamp(v: int, low: int = 0, *, strict: bool = False):\n    return v > 3\n\nclass Box:\n    def __init__(self, size: int):\n        self.size = size\n\n    def fits(self, n: int) -> bool:\n        return n <= self.size\n\nasync def ping(host: str):\n    return host\n";
        let targets = find_targets(src).expect("parses");
        let calls = synthesize("m", &targets, 12, 1, &[], &[]);
        let clamp: Vec<&Call> = calls.iter().filter(|c| c.target == 0).collect();
        assert_eq!(clamp.len(), 12);
        assert_eq!(clamp[0].expr, "m.clamp(1)", "defaults are left to Python");
        assert!(
            clamp.iter().any(|c| c.args[0] == "4"),
            "neighbour of the literal 3"
        );
        assert!(
            calls
                .iter()
                .any(|c| c.expr == "obj.fits(1)" && c.setup == ["obj = m.Box(1)"]),
            "{:?}",
            calls.iter().map(|c| &c.expr).collect::<Vec<_>>()
        );
        assert!(calls.iter().any(|c| c.expr == "asyncio.run(m.ping(\"a\"))"));
        assert_eq!(
            calls,
            synthesize("m", &targets, 12, 1, &[], &[]),
            "deterministic for a seed"
        );
    }

    #[test]
    fn unannotated_parameters_get_values_their_default_or_name_suggests() {
        let param = |name: &str, default: Option<&str>| Param {
            name: name.into(),
            annotation: None,
            default: default.map(str::to_string),
            keyword_only: false,
            positional_only: false,
            keys: vec![],
        };
        let first = |p: &Param| pool(p, &[], 20)[0].clone();
        assert_eq!(
            first(&param("xml_input", None)),
            "'<a><b>1</b><c x=\"2\">text</c></a>'"
        );
        assert_eq!(first(&param("field_names", None)), "['x', 'y']");
        assert_eq!(first(&param("func", None)), "str");
        assert_eq!(first(&param("text", None)), "\"a\"");
        assert_eq!(first(&param("count", None)), "1");
        assert!(first(&param("file_obj", None)).starts_with("io.StringIO("));
        assert!(first(&param("dt", None)).starts_with("datetime."));
        assert!(first(&param("doc", None)).starts_with("'Usage: "));
        assert_eq!(first(&param("argv", None)), "['-v', 'bob']");
        assert!(pool(&param("fmt", None), &[], 20).contains(&"'{} and {:d}'".to_string()));
        assert!(pool(&param("func", None), &[], 20).contains(&"int".to_string()));
        // A default's type wins over the name, and stays first.
        let sep = pool(&param("count", Some("','")), &[], 20);
        assert_eq!(sep[0], "','");
        assert!(sep.contains(&"\"hello world\"".to_string()), "{sep:?}");
        // Nothing known: the mixed pool, None included.
        assert!(pool(&param("zz", None), &[], 20).contains(&"None".to_string()));
    }

    #[test]
    fn a_parameter_left_at_its_default_moves_later_ones_to_keywords() {
        let targets = find_targets(
            "import pyexpat as expat\n\ndef parse(xml_input, encoding=None, expat=expat, strict=False):\n    return xml_input\n\ndef pos(a, b=1, /, c=2):\n    return a\n\ndef star(a, b=1, *rest):\n    return a\n",
        )
        .expect("parses");
        let values = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (args, kwargs) = arg_list(
            &targets[0].params,
            &values(&["'<a/>'", "None", "expat", "True"]),
        );
        assert_eq!(args, ["'<a/>'"]);
        assert_eq!(kwargs, [("strict".to_string(), "True".to_string())]);
        // Positional-only parameters are always passed by position.
        let (args, kwargs) = arg_list(&targets[1].params, &values(&["0", "1", "5"]));
        assert_eq!((args, kwargs), (values(&["0", "1", "5"]), vec![]));
        let (args, _) = arg_list(&targets[1].params, &values(&["0", "1", "2"]));
        assert_eq!(args, ["0", "1"]);
        // Values for *rest need every positional parameter before them.
        let (args, _) = arg_list(&targets[2].params, &values(&["0", "1", "7, 8"]));
        assert_eq!(args, ["0", "1", "7, 8"]);
    }
}
