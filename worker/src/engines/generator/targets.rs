//! What can be called: the module's public functions and methods with their parameters,
//! found with a Rust Python parser, and the literals each body compares against (the
//! seeds of boundary inputs).

use std::collections::{HashMap, HashSet};

use rustpython_ast::{self as ast, Visitor};
use rustpython_parser::Parse;

/// One parameter of a callable.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    /// Annotation as written (`int`, `list[str]`, `Optional[float]`).
    pub annotation: Option<String>,
    /// Default value as written.
    pub default: Option<String>,
    pub keyword_only: bool,
    /// Before `/`: never passed by keyword.
    pub positional_only: bool,
    /// String keys the body looks up in it (`p["k"]`, `p.get("k", 0)`, `"k" in p`) as
    /// Python source, with the default `get` gives, if any: it is a mapping with them.
    pub keys: Vec<(String, Option<String>)>,
}

/// How a callable is reached from the module.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    /// A module-level function.
    Module,
    /// A method: an instance is built with the class's `__init__` parameters.
    Instance { class: String, init: Vec<Param> },
    /// A staticmethod or classmethod, called on the class.
    Class { class: String },
}

/// A function or method to generate tests for.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub owner: Owner,
    pub params: Vec<Param>,
    pub is_async: bool,
    pub is_generator: bool,
    /// First and last line of the definition.
    pub lines: (u32, u32),
    /// Literal values in the body as Python source, with their line.
    pub literals: Vec<(u32, String)>,
    /// Argument lists of calls to it in the module's doctest examples (`>>> f(2, x=3)`),
    /// when every argument is a literal.
    pub examples: Vec<Example>,
    /// A module function taking no required argument in a module that reads its command
    /// line (`sys.argv`, `argparse`): called with command lines (`main()` after
    /// `sys.argv = ['prog', '-r', 'XII']`), the flags the module's strings name.
    pub command_line: Option<Vec<String>>,
    /// The module-level constant tables its body reads (`_PLURALS = {'child': ...}`):
    /// their entries are inputs the function knows, and their mutants are the call's to
    /// kill although tracing shows no line of them (they ran at import).
    pub tables: Table,
}

/// Literal entries of module-level constants, and the lines they span.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub lines: Vec<u32>,
    /// String and number literals as Python source, in the order written.
    pub values: Vec<String>,
}

impl Table {
    fn extend(&mut self, other: &Table) {
        for l in &other.lines {
            if !self.lines.contains(l) {
                self.lines.push(*l);
            }
        }
        for v in &other.values {
            if !self.values.contains(v) {
                self.values.push(v.clone());
            }
        }
    }
}

/// The module being read: its text, line starts and constant tables.
struct Module<'a> {
    source: &'a str,
    lines: &'a Lines,
    tables: HashMap<String, Table>,
}

impl Module<'_> {
    /// The tables among `names`, merged.
    fn tables_read(&self, names: &HashSet<String>) -> Table {
        let mut out = Table::default();
        let mut read: Vec<&String> = names
            .iter()
            .filter(|n| self.tables.contains_key(*n))
            .collect();
        read.sort();
        for name in read {
            out.extend(&self.tables[name]);
        }
        out
    }
}

/// Module-level assignments of a name to a container of at least three literals (or to
/// an expression over such tables, `_P2S = {v: k for k, v in _S2P.items()}`), by name.
fn module_tables(suite: &[ast::Stmt], source: &str, lines: &Lines) -> HashMap<String, Table> {
    let mut tables: HashMap<String, Table> = HashMap::new();
    for stmt in suite {
        let (name, value, range) = match stmt {
            ast::Stmt::Assign(a) => match a.targets.as_slice() {
                [ast::Expr::Name(n)] => (n.id.to_string(), a.value.as_ref(), a.range),
                _ => continue,
            },
            ast::Stmt::AnnAssign(a) => match (a.target.as_ref(), &a.value) {
                (ast::Expr::Name(n), Some(v)) => (n.id.to_string(), v.as_ref(), a.range),
                _ => continue,
            },
            _ => continue,
        };
        let container = matches!(
            value,
            ast::Expr::Dict(_)
                | ast::Expr::List(_)
                | ast::Expr::Tuple(_)
                | ast::Expr::Set(_)
                | ast::Expr::DictComp(_)
                | ast::Expr::SetComp(_)
                | ast::Expr::ListComp(_)
                | ast::Expr::Call(_)
        );
        if !container {
            continue;
        }
        let mut collector = Literals::new(source, lines);
        collector.visit_expr(value.clone());
        let mut table = Table {
            lines: (lines.line(usize::from(range.start()))
                ..=lines.line(usize::from(range.end()).saturating_sub(1)))
                .collect(),
            values: Vec::new(),
        };
        for (_, v) in collector.found {
            if !table.values.contains(&v) {
                table.values.push(v);
            }
        }
        // Sorted: the merged entries' order decides which ones calls pick.
        let mut used: Vec<&String> = collector.names.iter().collect();
        used.sort();
        for t in used.into_iter().filter_map(|name| tables.get(name)) {
            table.extend(t);
        }
        if table.values.len() >= 3 {
            tables.insert(name, table);
        }
    }
    tables
}

/// The arguments of one example call, as Python source.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Example {
    pub args: Vec<String>,
    pub kwargs: Vec<(String, String)>,
}

impl Target {
    /// `name` or `Class.name`.
    pub fn qualname(&self) -> String {
        match &self.owner {
            Owner::Module => self.name.clone(),
            Owner::Instance { class, .. } | Owner::Class { class } => {
                format!("{class}.{}", self.name)
            }
        }
    }
}

/// Values a special method's syntax takes that its parameter's name does not suggest:
/// `obj[...]` takes slices and lists of indices as well as one index.
pub fn operator_inputs(name: &str) -> &'static [&'static str] {
    match name {
        "__getitem__" => &["slice(1, None)", "slice(None)", "[0, 1]", "-1"],
        _ => &[],
    }
}

/// The syntax that calls a special method, `{0}` standing for the instance, `{1}` for
/// the one argument and `{*}` for all of them: `obj[1]` tests `__getitem__`, `len(obj)`
/// `__len__`. Special methods without one (`__hash__`, `__setitem__`, in-place operators)
/// are not targets. Binary operators are parenthesised: the expression sits inside
/// `assert ... == expected`.
pub fn operator_syntax(name: &str) -> Option<&'static str> {
    Some(match name {
        "__getitem__" => "{0}[{1}]",
        "__contains__" => "({1} in {0})",
        "__len__" => "len({0})",
        "__iter__" => "list({0})",
        "__reversed__" => "list(reversed({0}))",
        "__repr__" => "repr({0})",
        "__str__" => "str({0})",
        "__bool__" => "bool({0})",
        "__int__" => "int({0})",
        "__float__" => "float({0})",
        "__abs__" => "abs({0})",
        "__neg__" => "(-{0})",
        "__invert__" => "(~{0})",
        "__eq__" => "({0} == {1})",
        "__ne__" => "({0} != {1})",
        "__lt__" => "({0} < {1})",
        "__le__" => "({0} <= {1})",
        "__gt__" => "({0} > {1})",
        "__ge__" => "({0} >= {1})",
        "__add__" => "({0} + {1})",
        "__sub__" => "({0} - {1})",
        "__mul__" => "({0} * {1})",
        "__truediv__" => "({0} / {1})",
        "__floordiv__" => "({0} // {1})",
        "__mod__" => "({0} % {1})",
        "__pow__" => "({0} ** {1})",
        "__and__" => "({0} & {1})",
        "__or__" => "({0} | {1})",
        "__xor__" => "({0} ^ {1})",
        "__lshift__" => "({0} << {1})",
        "__rshift__" => "({0} >> {1})",
        "__matmul__" => "({0} @ {1})",
        "__radd__" => "({1} + {0})",
        "__rsub__" => "({1} - {0})",
        "__rmul__" => "({1} * {0})",
        "__rtruediv__" => "({1} / {0})",
        "__rfloordiv__" => "({1} // {0})",
        "__rmod__" => "({1} % {0})",
        "__rpow__" => "({1} ** {0})",
        "__rand__" => "({1} & {0})",
        "__ror__" => "({1} | {0})",
        "__rxor__" => "({1} ^ {0})",
        "__pos__" => "(+{0})",
        "__round__" => "round({0})",
        "__complex__" => "complex({0})",
        "__divmod__" => "divmod({0}, {1})",
        "__format__" => "format({0}, {1})",
        // A pickle round trip runs `__getstate__` and `__setstate__`.
        "__getstate__" => "pickle.loads(pickle.dumps({0}))",
        // All the arguments: `obj(1, key=2)`.
        "__call__" => "{0}({*})",
        _ => return None,
    })
}

/// Why a module could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot parse the module: {0}")]
pub struct ParseFailure(pub String);

struct Lines(Vec<usize>);

impl Lines {
    fn new(source: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Self(starts)
    }

    fn line(&self, offset: usize) -> u32 {
        self.0.partition_point(|&s| s <= offset) as u32
    }
}

fn text(source: &str, range: ast::text_size::TextRange) -> String {
    source
        .get(usize::from(range.start())..usize::from(range.end()))
        .unwrap_or("")
        .to_string()
}

/// Finds the module's public functions and methods.
pub fn find_targets(source: &str) -> Result<Vec<Target>, ParseFailure> {
    let suite = ast::Suite::parse(source, "<module>").map_err(|e| ParseFailure(e.to_string()))?;
    let lines = Lines::new(source);
    let module = Module {
        source,
        lines: &lines,
        tables: module_tables(&suite, source, &lines),
    };
    let mut out = Vec::new();
    for stmt in &suite {
        match stmt {
            ast::Stmt::FunctionDef(f) => {
                push_function(
                    &mut out,
                    &module,
                    &f.name,
                    &f.args,
                    &f.body,
                    f.range,
                    false,
                    Owner::Module,
                    &f.decorator_list,
                );
            }
            ast::Stmt::AsyncFunctionDef(f) => {
                push_function(
                    &mut out,
                    &module,
                    &f.name,
                    &f.args,
                    &f.body,
                    f.range,
                    true,
                    Owner::Module,
                    &f.decorator_list,
                );
            }
            ast::Stmt::ClassDef(c) if !c.name.as_str().starts_with('_') => {
                let init = c
                    .body
                    .iter()
                    .find_map(|s| match s {
                        ast::Stmt::FunctionDef(f) if f.name.as_str() == "__init__" => {
                            Some(params(source, &f.args, true))
                        }
                        _ => None,
                    })
                    .unwrap_or_default();
                for s in &c.body {
                    let (f_name, f_args, f_body, f_range, is_async, decorators) = match s {
                        ast::Stmt::FunctionDef(f) => {
                            (&f.name, &f.args, &f.body, f.range, false, &f.decorator_list)
                        }
                        ast::Stmt::AsyncFunctionDef(f) => {
                            (&f.name, &f.args, &f.body, f.range, true, &f.decorator_list)
                        }
                        _ => continue,
                    };
                    let decorator_names: Vec<String> = decorators
                        .iter()
                        .map(|d| text(source, ast::Ranged::range(d)))
                        .collect();
                    if decorator_names
                        .iter()
                        .any(|d| d == "property" || d.ends_with(".setter"))
                    {
                        continue;
                    }
                    let is_static = decorator_names
                        .iter()
                        .any(|d| d == "staticmethod" || d == "classmethod");
                    let owner = if is_static {
                        Owner::Class {
                            class: c.name.to_string(),
                        }
                    } else {
                        Owner::Instance {
                            class: c.name.to_string(),
                            init: init.clone(),
                        }
                    };
                    let skip_first = !decorator_names.iter().any(|d| d == "staticmethod");
                    let mut target = build(
                        &module, f_name, f_args, f_body, f_range, is_async, owner, skip_first,
                    );
                    if let Some(t) = target.take() {
                        out.push(t);
                    }
                }
            }
            _ => {}
        }
    }
    let examples = doctest_examples(&suite);
    for target in &mut out {
        target.examples = examples
            .iter()
            .filter(|(callee, _)| callee == &target.name)
            .map(|(_, e)| e.clone())
            .collect();
        target.examples.dedup();
    }
    let reads_argv = ["sys.argv", "argparse", "getopt", "optparse"]
        .iter()
        .any(|m| source.contains(m));
    if reads_argv {
        let mut flags: Vec<String> = Vec::new();
        for (_, literal) in out.iter().flat_map(|t| &t.literals) {
            let inner = literal.trim_matches(['\'', '"']);
            let flag = inner.starts_with('-')
                && inner.len() > 1
                && inner[1..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if flag && !flags.contains(literal) {
                flags.push(literal.clone());
            }
        }
        for target in &mut out {
            let required = target
                .params
                .iter()
                .any(|p| p.default.is_none() && !p.name.starts_with('*'));
            if matches!(target.owner, Owner::Module) && !required && !target.is_async {
                target.command_line = Some(flags.clone());
            }
        }
    }
    Ok(out)
}

/// Docstrings of the module, its classes and their functions.
fn docstrings(suite: &[ast::Stmt], out: &mut Vec<String>) {
    if let Some(ast::Stmt::Expr(e)) = suite.first() {
        if let ast::Expr::Constant(c) = e.value.as_ref() {
            if let ast::Constant::Str(s) = &c.value {
                out.push(s.clone());
            }
        }
    }
    for stmt in suite {
        match stmt {
            ast::Stmt::FunctionDef(f) => docstrings(&f.body, out),
            ast::Stmt::AsyncFunctionDef(f) => docstrings(&f.body, out),
            ast::Stmt::ClassDef(c) => docstrings(&c.body, out),
            _ => {}
        }
    }
}

/// Calls in the `>>>` lines of every docstring whose arguments are all literals, as
/// (callee name, arguments): `mod.f(1)`, `f(1)` and `obj.f(1)` all name `f`.
fn doctest_examples(suite: &[ast::Stmt]) -> Vec<(String, Example)> {
    let mut texts = Vec::new();
    docstrings(suite, &mut texts);
    let mut calls = ExampleCalls::default();
    for docstring in &texts {
        // Names an example assigns a literal to (`>>> SIZES = [1.5, 4]`) stand for it in
        // the calls after them in the same docstring.
        calls.names.clear();
        for line in docstring.lines() {
            let Some(code) = line.trim_start().strip_prefix(">>> ") else {
                continue;
            };
            let Ok(parsed) = ast::Suite::parse(code, "<doctest>") else {
                continue;
            };
            calls.source = code.to_string();
            for stmt in parsed {
                if let ast::Stmt::Assign(a) = &stmt {
                    if let ([ast::Expr::Name(n)], true) =
                        (a.targets.as_slice(), is_literal(&a.value))
                    {
                        let value = text(code, ast::Ranged::range(a.value.as_ref()));
                        calls.names.insert(n.id.to_string(), value);
                    }
                }
                calls.visit_stmt(stmt);
            }
        }
    }
    calls.found
}

#[derive(Default)]
struct ExampleCalls {
    source: String,
    /// Literals the docstring's examples assigned to names so far.
    names: std::collections::HashMap<String, String>,
    found: Vec<(String, Example)>,
}

impl ExampleCalls {
    /// An argument as literal source: a literal, or a name assigned one earlier.
    fn literal_text(&self, expr: &ast::Expr) -> Option<String> {
        match expr {
            ast::Expr::Name(n) => self.names.get(n.id.as_str()).cloned(),
            e if is_literal(e) => Some(text(&self.source, ast::Ranged::range(e))),
            _ => None,
        }
    }
}

/// A constant, or a container or sign of constants.
fn is_literal(expr: &ast::Expr) -> bool {
    match expr {
        ast::Expr::Constant(c) => !matches!(c.value, ast::Constant::Ellipsis),
        ast::Expr::List(l) => l.elts.iter().all(is_literal),
        ast::Expr::Tuple(t) => t.elts.iter().all(is_literal),
        ast::Expr::Set(s) => s.elts.iter().all(is_literal),
        ast::Expr::Dict(d) => {
            d.keys.iter().all(|k| k.as_ref().is_some_and(is_literal))
                && d.values.iter().all(is_literal)
        }
        ast::Expr::UnaryOp(u) => {
            matches!(u.op, ast::UnaryOp::USub | ast::UnaryOp::UAdd) && is_literal(&u.operand)
        }
        _ => false,
    }
}

impl Visitor for ExampleCalls {
    fn visit_expr_call(&mut self, node: ast::ExprCall) {
        let callee = match node.func.as_ref() {
            ast::Expr::Name(n) => Some(n.id.to_string()),
            ast::Expr::Attribute(a) => Some(a.attr.to_string()),
            _ => None,
        };
        let args: Option<Vec<String>> = node.args.iter().map(|a| self.literal_text(a)).collect();
        let kwargs: Option<Vec<(String, String)>> = node
            .keywords
            .iter()
            .map(|k| Some((k.arg.as_ref()?.to_string(), self.literal_text(&k.value)?)))
            .collect();
        if let (Some(callee), Some(args), Some(kwargs)) = (callee, args, kwargs) {
            self.found.push((callee, Example { args, kwargs }));
        }
        self.generic_visit_expr_call(node);
    }
}

#[allow(clippy::too_many_arguments)]
fn push_function(
    out: &mut Vec<Target>,
    module: &Module,
    name: &ast::Identifier,
    args: &ast::Arguments,
    body: &[ast::Stmt],
    range: ast::text_size::TextRange,
    is_async: bool,
    owner: Owner,
    decorators: &[ast::Expr],
) {
    // Decorated module functions may be wrapped into something else entirely.
    let plain = decorators.iter().all(|d| {
        let t = text(module.source, ast::Ranged::range(d));
        t.starts_with("functools.") || t.starts_with("lru_cache") || t.starts_with("cache")
    });
    if plain {
        if let Some(t) = build(module, name, args, body, range, is_async, owner, false) {
            out.push(t);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build(
    module: &Module,
    name: &ast::Identifier,
    args: &ast::Arguments,
    body: &[ast::Stmt],
    range: ast::text_size::TextRange,
    is_async: bool,
    owner: Owner,
    skip_first: bool,
) -> Option<Target> {
    let (source, lines) = (module.source, module.lines);
    let operator = match &owner {
        Owner::Instance { .. } => operator_syntax(name.as_str()),
        _ => None,
    };
    if name.as_str().starts_with('_') && operator.is_none() {
        return None;
    }
    // *args/**kwargs are left empty; the named parameters are what inputs are made for.
    let mut collector = Literals::new(source, lines);
    for stmt in body {
        collector.visit_stmt(stmt.clone());
    }
    let mut found = collector.found;
    found.dedup();
    let mut params = params(source, args, skip_first);
    if let Some(syntax) = operator.filter(|s| !s.contains("{*}")) {
        // The syntax passes the first argument (`obj[k]`) or none (`len(obj)`).
        params.truncate(usize::from(syntax.contains("{1}")));
    }
    for (name, key, default) in collector.keys {
        if let Some(p) = params.iter_mut().find(|p| p.name == name) {
            if !p.keys.iter().any(|(k, _)| k == &key) {
                p.keys.push((key, default));
            }
        }
    }
    Some(Target {
        name: name.to_string(),
        owner,
        params,
        is_async,
        is_generator: collector.generator,
        lines: (
            lines.line(usize::from(range.start())),
            lines.line(usize::from(range.end()).saturating_sub(1)),
        ),
        literals: found,
        examples: Vec::new(),
        command_line: None,
        tables: module.tables_read(&collector.names),
    })
}

fn params(source: &str, args: &ast::Arguments, skip_first: bool) -> Vec<Param> {
    let positional = args
        .posonlyargs
        .iter()
        .chain(args.args.iter())
        .skip(usize::from(skip_first));
    let positional_only = args
        .posonlyargs
        .len()
        .saturating_sub(usize::from(skip_first));
    let convert = |a: &ast::ArgWithDefault, keyword_only: bool| Param {
        name: a.def.arg.to_string(),
        annotation: a
            .def
            .annotation
            .as_ref()
            .map(|e| text(source, ast::Ranged::range(e.as_ref()))),
        default: a
            .default
            .as_ref()
            .map(|e| text(source, ast::Ranged::range(e.as_ref()))),
        keyword_only,
        positional_only: false,
        keys: Vec::new(),
    };
    let mut out: Vec<Param> = positional
        .enumerate()
        .map(|(i, a)| Param {
            positional_only: i < positional_only,
            ..convert(a, false)
        })
        .collect();
    // `*args` and `**kwargs` become one parameter each whose values are raw argument text.
    if let Some(v) = &args.vararg {
        out.push(Param {
            name: format!("*{}", v.arg),
            annotation: None,
            default: None,
            keyword_only: false,
            positional_only: false,
            keys: Vec::new(),
        });
    }
    out.extend(args.kwonlyargs.iter().map(|a| convert(a, true)));
    if let Some(k) = &args.kwarg {
        out.push(Param {
            name: format!("**{}", k.arg),
            annotation: None,
            default: None,
            keyword_only: true,
            positional_only: false,
            keys: Vec::new(),
        });
    }
    out
}

struct Literals<'a> {
    source: &'a str,
    lines: &'a Lines,
    found: Vec<(u32, String)>,
    generator: bool,
    /// (name, string key as source, `get` default as source) of key lookups on names.
    keys: Vec<(String, String, Option<String>)>,
    /// Names read.
    names: HashSet<String>,
}

impl<'a> Literals<'a> {
    fn new(source: &'a str, lines: &'a Lines) -> Self {
        Self {
            source,
            lines,
            found: Vec::new(),
            generator: false,
            keys: Vec::new(),
            names: HashSet::new(),
        }
    }

    /// `expr` as a string constant's source text.
    fn str_key(&self, expr: &ast::Expr) -> Option<String> {
        match expr {
            ast::Expr::Constant(c) if matches!(c.value, ast::Constant::Str(_)) => {
                Some(text(self.source, c.range))
            }
            _ => None,
        }
    }
}

fn name_of(expr: &ast::Expr) -> Option<String> {
    match expr {
        ast::Expr::Name(n) => Some(n.id.to_string()),
        _ => None,
    }
}

impl Visitor for Literals<'_> {
    fn visit_expr_name(&mut self, node: ast::ExprName) {
        if matches!(node.ctx, ast::ExprContext::Load) {
            self.names.insert(node.id.to_string());
        }
    }

    fn visit_expr_subscript(&mut self, node: ast::ExprSubscript) {
        if let (Some(name), Some(key)) = (name_of(&node.value), self.str_key(&node.slice)) {
            self.keys.push((name, key, None));
        }
        self.generic_visit_expr_subscript(node);
    }

    fn visit_expr_call(&mut self, node: ast::ExprCall) {
        if let ast::Expr::Attribute(a) = node.func.as_ref() {
            let lookup = matches!(a.attr.as_str(), "get" | "pop" | "setdefault");
            if let (true, Some(name), Some(key)) = (
                lookup,
                name_of(&a.value),
                node.args.first().and_then(|k| self.str_key(k)),
            ) {
                let default = node
                    .args
                    .get(1)
                    .map(|d| text(self.source, ast::Ranged::range(d)));
                self.keys.push((name, key, default));
            }
        }
        self.generic_visit_expr_call(node);
    }

    fn visit_expr_compare(&mut self, node: ast::ExprCompare) {
        if let ([ast::CmpOp::In | ast::CmpOp::NotIn], [container], Some(key)) = (
            node.ops.as_slice(),
            node.comparators.as_slice(),
            self.str_key(&node.left),
        ) {
            if let Some(name) = name_of(container) {
                self.keys.push((name, key, None));
            }
        }
        self.generic_visit_expr_compare(node);
    }

    fn visit_expr_constant(&mut self, node: ast::ExprConstant) {
        let keep = match &node.value {
            ast::Constant::Int(_) | ast::Constant::Float(_) => true,
            ast::Constant::Str(s) => s.len() <= 40 && !s.contains('\n'),
            ast::Constant::Bool(_) | ast::Constant::None => false,
            _ => false,
        };
        if keep {
            let line = self.lines.line(usize::from(node.range.start()));
            self.found.push((line, text(self.source, node.range)));
        }
    }

    fn visit_expr_yield(&mut self, node: ast::ExprYield) {
        self.generator = true;
        self.generic_visit_expr_yield(node);
    }

    fn visit_expr_yield_from(&mut self, node: ast::ExprYieldFrom) {
        self.generator = true;
        self.generic_visit_expr_yield_from(node);
    }

    fn visit_stmt_expr(&mut self, node: ast::StmtExpr) {
        // A docstring is not a literal the code compares against.
        if matches!(node.value.as_ref(), ast::Expr::Constant(c) if matches!(c.value, ast::Constant::Str(_)))
        {
            return;
        }
        self.generic_visit_stmt_expr(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctest_calls_with_literal_arguments_become_examples() {
        let src = "\"\"\"Tools.\n\n>>> parse('1:30')\n90\n\"\"\"\n\ndef parse(text, *, strict=False):\n    \"\"\"Seconds.\n\n    >>> parse(\"2:00\", strict=True)\n    120\n    >>> parse(name)\n    >>> x = parse([1, -2])\n    \"\"\"\n    return 0\n\n\nclass Box:\n    \"\"\">>> Box().fit(3)\"\"\"\n    def fit(self, n):\n        return n\n";
        let targets = find_targets(src).expect("parses");
        let parse = &targets[0];
        assert_eq!(
            parse.examples,
            vec![
                Example {
                    args: vec!["'1:30'".into()],
                    kwargs: vec![]
                },
                Example {
                    args: vec!["\"2:00\"".into()],
                    kwargs: vec![("strict".into(), "True".into())]
                },
                Example {
                    args: vec!["[1, -2]".into()],
                    kwargs: vec![]
                },
            ],
            "`parse(name)` has a non-literal argument"
        );
        assert_eq!(targets[1].examples.len(), 1);
        assert_eq!(targets[1].examples[0].args, vec!["3".to_string()]);
    }

    #[test]
    fn names_a_doctest_assigns_literals_to_stand_for_them() {
        let src = "def ceil(x, options=None):\n    \"\"\"\n    >>> SIZES = [1.5, 2.5, 4]\n    >>> ceil(3.5, options=SIZES)\n    4\n    >>> ceil(y)\n    \"\"\"\n    return x\n\n\ndef other(v):\n    \"\"\">>> other(SIZES)\"\"\"\n    return v\n";
        let targets = find_targets(src).expect("parses");
        assert_eq!(
            targets[0].examples,
            vec![Example {
                args: vec!["3.5".into()],
                kwargs: vec![("options".into(), "[1.5, 2.5, 4]".into())]
            }],
            "`y` was never assigned"
        );
        assert!(
            targets[1].examples.is_empty(),
            "a name stands for its literal only in its own docstring"
        );
    }

    const MODULE: &str = r#"
import math

def clamp(value: int, low: int = 0, high: int = 10) -> int:
    """Docstring literal 'ignored'."""
    if value < low:
        return low
    return min(value, high * 2)

async def fetch(url: str, *, retries=3):
    return url

def _private(x):
    return x

def numbers(n):
    for i in range(n):
        yield i * 1.5

class Stack:
    def __init__(self, capacity: int = 4):
        self.items = []

    def push(self, item) -> None:
        if len(self.items) >= 4:
            raise OverflowError("full")
        self.items.append(item)

    @staticmethod
    def describe(kind: str):
        return kind

    @property
    def size(self):
        return len(self.items)
"#;

    #[test]
    fn finds_public_functions_methods_and_their_parameters() {
        let targets = find_targets(MODULE).expect("parses");
        let names: Vec<String> = targets.iter().map(Target::qualname).collect();
        assert_eq!(
            names,
            vec!["clamp", "fetch", "numbers", "Stack.push", "Stack.describe"]
        );
        let clamp = &targets[0];
        assert_eq!(clamp.params.len(), 3);
        assert_eq!(clamp.params[0].annotation.as_deref(), Some("int"));
        assert_eq!(clamp.params[1].default.as_deref(), Some("0"));
        assert_eq!(clamp.literals, vec![(8, "2".to_string())]);
        assert_eq!(clamp.lines, (4, 8));
        assert!(targets[1].is_async);
        assert!(targets[1].params[1].keyword_only);
        assert!(targets[2].is_generator);
        let push = &targets[3];
        assert_eq!(push.params.len(), 1, "self is not a parameter");
        assert!(matches!(&push.owner, Owner::Instance { init, .. } if init.len() == 1));
        assert!(
            push.literals.contains(&(25, "4".to_string())),
            "{:?}",
            push.literals
        );
        assert!(push.literals.contains(&(26, "\"full\"".to_string())));
        assert!(matches!(targets[4].owner, Owner::Class { .. }));
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(find_targets("def broken(:\n").is_err());
    }
}
