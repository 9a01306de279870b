//! `--format` as Docker takes it: `table` (the default), `json`, a Go template
//! (`'{{.Name}}'`, `'{{json .}}'`) printed once per row, or `table` followed by a template
//! (`'table {{.ID}}\t{{.Name}}'`): a header row made from the field names, then one row per
//! object, in aligned columns.
//!
//! The templates of `ls` and `ps` see rows with Docker-style field names (ID, Name, ...);
//! those of `inspect` see the JSON document `--format json` prints.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{anyhow, bail};
use clap::Args;
use gtmpl::error::ExecError;
use gtmpl::{Context, FuncError, Value};
use tabwriter::TabWriter;

/// The longest template taken, in bytes.
pub const MAX_TEMPLATE: usize = 4096;

#[derive(Args, Debug, Clone)]
pub struct FormatArgs {
    /// Output format: `table`, `json`, a Go template (`'{{.Name}}'`, `'{{json .}}'`) or
    /// `table` then a template (`'table {{.ID}}\t{{.Name}}'`, with a header row).
    #[arg(long, default_value = "table", value_name = "FORMAT")]
    pub format: String,
}

#[derive(Args, Debug, Clone)]
pub struct InspectFormatArgs {
    /// Output format: `json`, or a Go template over the JSON document (`'{{.name}}'`,
    /// `'{{json .ports}}'`).
    #[arg(long, default_value = "json", value_name = "FORMAT")]
    pub format: String,
}

/// One kind of row: its fields, as templates name them, with their column headers, and
/// the columns of the built-in table.
pub struct RowKind {
    pub fields: &'static [(&'static str, &'static str)],
    pub table: &'static [&'static str],
}

impl RowKind {
    fn index(&self, field: &str) -> usize {
        self.fields
            .iter()
            .position(|(name, _)| *name == field)
            .expect("a table column is one of the fields")
    }

    fn names(&self) -> String {
        self.fields
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn context(&self, values: &[String]) -> Context {
        Context::from(Value::Object(
            self.fields
                .iter()
                .zip(values)
                .map(|((name, _), v)| (name.to_string(), Value::String(v.clone())))
                .collect::<HashMap<_, _>>(),
        ))
    }
}

/// One row: a value for each field of its kind, in the kind's order.
pub type Row = Vec<String>;

pub enum Format {
    Table,
    Json,
    Template(Template),
}

pub struct Template {
    /// `table TEMPLATE`: a header row and aligned columns.
    table: bool,
    tmpl: gtmpl::Template,
}

/// The functions templates get beyond Go's built-ins, as Docker adds them.
fn add_funcs(t: &mut gtmpl::Template) {
    t.add_func("json", json_func);
    t.add_func("upper", |args| {
        Ok(Value::String(one_string("upper", args)?.to_uppercase()))
    });
    t.add_func("lower", |args| {
        Ok(Value::String(one_string("lower", args)?.to_lowercase()))
    });
    t.add_func("join", join_func);
}

fn one_string(name: &str, args: &[Value]) -> Result<String, FuncError> {
    match args {
        [v] => Ok(v.to_string()),
        _ => Err(FuncError::ExactlyXArgs(name.into(), 1)),
    }
}

fn json_func(args: &[Value]) -> Result<Value, FuncError> {
    match args {
        [v] => Ok(Value::String(to_json(v).to_string())),
        _ => Err(FuncError::ExactlyXArgs("json".into(), 1)),
    }
}

fn join_func(args: &[Value]) -> Result<Value, FuncError> {
    match args {
        [Value::Array(items), sep] => Ok(Value::String(
            items
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(&sep.to_string()),
        )),
        [_, _] => Err(FuncError::Generic(
            "join: the first argument is not a list".into(),
        )),
        _ => Err(FuncError::ExactlyXArgs("join".into(), 2)),
    }
}

fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::NoValue | Value::Nil | Value::Function(_) => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::String(s) => J::String(s.clone()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                J::from(i)
            } else if let Some(u) = n.as_u64() {
                J::from(u)
            } else {
                n.as_f64().map(J::from).unwrap_or(J::Null)
            }
        }
        Value::Array(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Object(m) | Value::Map(m) => {
            J::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

/// A JSON document as templates see it: objects are maps, so a missing key prints
/// `<no value>` as in Go.
pub fn from_json(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Nil,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or_default())
            }
        }
        J::String(s) => Value::String(s.clone()),
        J::Array(items) => Value::Array(items.iter().map(from_json).collect()),
        J::Object(m) => Value::Map(m.iter().map(|(k, v)| (k.clone(), from_json(v))).collect()),
    }
}

/// A render error as one line; an unknown field lists the known ones.
fn exec_error(e: ExecError, kind: Option<&RowKind>) -> anyhow::Error {
    match (e, kind) {
        (ExecError::NoFiledFor(field, _), Some(kind)) => {
            anyhow!(
                "--format: no field {field:?}; the fields are {}",
                kind.names()
            )
        }
        (e, _) => anyhow!("--format: {}", e.to_string().replace('\n', " ")),
    }
}

impl Format {
    /// Reads `--format` for rows of `kind` (for `ls`/`ps`), or for JSON documents
    /// (`inspect`) when `kind` is None. A template is tried on a row of empty fields so
    /// that a misspelt field fails before anything is asked of the cluster.
    pub fn parse(text: &str, kind: Option<&RowKind>) -> anyhow::Result<Format> {
        if text.len() > MAX_TEMPLATE {
            bail!(
                "--format: the template is {} bytes long; at most {MAX_TEMPLATE} are taken",
                text.len()
            );
        }
        match text.trim() {
            "table" if kind.is_some() => return Ok(Format::Table),
            "table" => {
                bail!("--format: `table` is for ls and ps; inspect prints `json` or a template")
            }
            "json" => return Ok(Format::Json),
            _ => {}
        }
        // As Docker: a format that starts with `table` is a table.
        let (table, body) = match text.trim_start().strip_prefix("table") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if table && kind.is_none() {
            bail!("--format: `table` is for ls and ps; inspect prints `json` or a template");
        }
        // As Docker: `\t` and `\n` typed in a shell's single quotes are a tab and a newline.
        let body = body.trim().replace("\\t", "\t").replace("\\n", "\n");
        // gtmpl reports an action left open as a bad character on a line past the end.
        if let Some(open) = body.rfind("{{")
            && !body[open..].contains("}}")
        {
            bail!("--format: {text:?} is not a valid template: a `{{{{` is never closed");
        }
        let mut tmpl = gtmpl::Template::default();
        add_funcs(&mut tmpl);
        tmpl.parse(body.as_str()).map_err(|e| {
            anyhow!(
                "--format: {:?} is not a valid template: {}",
                text,
                e.to_string().replace('\n', " ")
            )
        })?;
        if let Some(kind) = kind {
            let empty = vec![String::new(); kind.fields.len()];
            tmpl.render(&kind.context(&empty))
                .map_err(|e| exec_error(e, Some(kind)))?;
        }
        Ok(Format::Template(Template { table, tmpl }))
    }
}

/// Prints rows as the built-in table or a template (JSON is each command's own).
pub fn write_rows(
    out: &mut impl Write,
    kind: &RowKind,
    format: &Format,
    rows: &[Row],
) -> anyhow::Result<()> {
    match format {
        Format::Json => unreachable!("each command prints its own JSON"),
        Format::Table => {
            let columns: Vec<usize> = kind.table.iter().map(|c| kind.index(c)).collect();
            let mut tw = TabWriter::new(out).padding(3);
            let header: Vec<&str> = columns.iter().map(|&i| kind.fields[i].1).collect();
            writeln!(tw, "{}", header.join("\t"))?;
            for row in rows {
                let cells: Vec<&str> = columns.iter().map(|&i| row[i].as_str()).collect();
                writeln!(tw, "{}", cells.join("\t"))?;
            }
            tw.flush()?;
        }
        Format::Template(t) if t.table => {
            let mut tw = TabWriter::new(out).padding(3);
            let headers: Vec<String> = kind.fields.iter().map(|(_, h)| h.to_string()).collect();
            let header = t
                .tmpl
                .render(&kind.context(&headers))
                .map_err(|e| exec_error(e, Some(kind)))?;
            writeln!(tw, "{header}")?;
            for row in rows {
                let line = t
                    .tmpl
                    .render(&kind.context(row))
                    .map_err(|e| exec_error(e, Some(kind)))?;
                writeln!(tw, "{line}")?;
            }
            tw.flush()?;
        }
        Format::Template(t) => {
            for row in rows {
                let line = t
                    .tmpl
                    .render(&kind.context(row))
                    .map_err(|e| exec_error(e, Some(kind)))?;
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(())
}

/// Prints the result of an `ls` or `ps` to stdout: its JSON documents (`--format json`), the
/// IDs only (`-q`), or rows (a table or a template).
pub fn print_list<T>(
    kind: &RowKind,
    format: &Format,
    quiet: bool,
    items: &[T],
    json: impl Fn(&T) -> serde_json::Value,
    row: impl Fn(&T) -> Row,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if matches!(format, Format::Json) && !quiet {
        let docs: Vec<serde_json::Value> = items.iter().map(json).collect();
        return write_docs(&mut out, &Format::Json, &docs);
    }
    let rows: Vec<Row> = items.iter().map(row).collect();
    if quiet {
        return write_ids(&mut out, kind, &rows);
    }
    write_rows(&mut out, kind, format, &rows)
}

/// Prints the IDs of rows, one a line (`-q`).
pub fn write_ids(out: &mut impl Write, kind: &RowKind, rows: &[Row]) -> anyhow::Result<()> {
    let id = kind.index("ID");
    for row in rows {
        writeln!(out, "{}", row[id])?;
    }
    Ok(())
}

/// Prints JSON documents (`inspect`): pretty as an array, or a template once per document.
pub fn write_docs(
    out: &mut impl Write,
    format: &Format,
    docs: &[serde_json::Value],
) -> anyhow::Result<()> {
    match format {
        Format::Template(t) => {
            for doc in docs {
                let line = t
                    .tmpl
                    .render(&Context::from(from_json(doc)))
                    .map_err(|e| exec_error(e, None))?;
                writeln!(out, "{line}")?;
            }
        }
        _ => writeln!(out, "{}", serde_json::to_string_pretty(docs)?)?,
    }
    Ok(())
}

/// An ID as tables show it: its first 12 characters unless `--no-trunc`.
pub fn id(id: &str, no_trunc: bool) -> String {
    if no_trunc {
        id.to_string()
    } else {
        id[..id.len().min(12)].to_string()
    }
}
