//! Request limits (SPEC 10): depth, complexity, aliases and string sizes, all refused with
//! INVALID_INPUT before anything runs; the rule that every error carries a code; and a
//! cache of parsed documents.

use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest, NextRequest, NextSubscribe,
};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Request, Response, ServerError, ServerResult, Value, Variables};
use futures::StreamExt;
use futures::stream::BoxStream;

pub const MAX_DEPTH: usize = 12;
pub const MAX_COMPLEXITY: usize = 2000;
pub const MAX_ALIASES: usize = 100;
/// Fields selected once every fragment is spread: bounds what validation walks (every
/// field costs at least one unit of complexity, so no document within the complexity limit
/// selects more, `__typename` aside).
pub const MAX_SELECTED_FIELDS: usize = 5 * MAX_COMPLEXITY;
/// Nesting of selections and fragment spreads, counted as async-graphql counts it (its
/// default, which this service keeps). Checked here first, because a chain of fragments is
/// followed by recursion, and async-graphql checks only after this extension has run.
pub const MAX_RECURSION: usize = 32;
pub const MAX_BATCH: usize = 10;
pub const MAX_BODY_BYTES: usize = 256 * 1024;
pub const MAX_STRING_BYTES: usize = 64 * 1024;

/// Rows the lists of one request (one HTTP request, a batch's operations together; one
/// WebSocket operation) may answer in all: as many as the longest list, a summary's groups.
/// The complexity limit counts a list a few rows whatever it returns.
pub const MAX_LISTED_ROWS: usize = credits_store::MAX_SUMMARY_GROUPS;

/// Rows the lists of one request whose length the caller does not choose may still answer
/// (found by review: 100 aliases of a 10,000-member team's `members` fit the complexity
/// limit and answered a million rows). The server gives each request one; a request
/// without one is not bounded. Lists are read one at a time under it, each no longer than
/// what is left, so the bound is exact and a refused list costs at most one row more.
pub struct Listed(tokio::sync::Mutex<usize>);

impl Listed {
    pub fn new() -> Arc<Listed> {
        Arc::new(Listed(tokio::sync::Mutex::new(MAX_LISTED_ROWS)))
    }
}

fn too_many() -> crate::ApiError {
    crate::ApiError::invalid(format!(
        "the answer would list more than {MAX_LISTED_ROWS} rows; ask for fewer lists"
    ))
}

/// Reads a list of at most `max` rows with `read(limit)`, which must return at most
/// `limit` rows, and counts them against the request's bound: past it, INVALID_INPUT.
pub async fn list<T, F>(
    ctx: &async_graphql::Context<'_>,
    max: usize,
    read: impl FnOnce(usize) -> F,
) -> crate::error::ApiResult<Vec<T>>
where
    F: std::future::Future<Output = crate::error::ApiResult<Vec<T>>>,
{
    let Some(listed) = ctx.data_opt::<Arc<Listed>>() else {
        return read(max).await;
    };
    let mut left = listed.0.lock().await;
    let rows = read(max.min(left.saturating_add(1))).await?;
    *left = left.checked_sub(rows.len()).ok_or_else(too_many)?;
    Ok(rows)
}

/// Counts a list already read against the request's bound (one whose read cannot be cut
/// short: a summary's groups, a viewer's wallets and teams).
pub async fn listed<T>(
    ctx: &async_graphql::Context<'_>,
    rows: Vec<T>,
) -> crate::error::ApiResult<Vec<T>> {
    list(ctx, usize::MAX, |_| async { Ok(rows) }).await
}

/// Documents kept parsed, most recently used first out last.
pub const PARSED_DOCUMENTS: usize = 256;
/// Longer queries, and ones that select more fields once fragments are spread, are parsed
/// every time; and the texts kept add up to at most [`MAX_CACHED_TOTAL_BYTES`], the least
/// recently used going first. A parsed document takes up to ~130 times its text, so the
/// cache stays under ten MiB (found by review: bounding each text alone let 256 documents
/// of 4 KiB hold 135 MB).
pub const MAX_CACHED_QUERY_BYTES: usize = 4 * 1024;
pub const MAX_CACHED_FIELDS: usize = 256;
pub const MAX_CACHED_TOTAL_BYTES: usize = 64 * 1024;

/// Parsed documents by query text. Clients send the same few operations with new variables,
/// and parsing one (pest) was a tenth of the server's CPU per `recordUsage`. Only documents
/// that passed the checks below are kept, and a document does not depend on variables, so
/// a hit is exactly what parsing again would give.
type Parsed = Mutex<hashlink::LruCache<Box<str>, ExecutableDocument>>;

pub struct Limits {
    parsed: Arc<Parsed>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            parsed: Arc::new(Mutex::new(hashlink::LruCache::new(PARSED_DOCUMENTS))),
        }
    }
}

impl ExtensionFactory for Limits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(LimitsExtension {
            parsed: self.parsed.clone(),
        })
    }
}

struct LimitsExtension {
    parsed: Arc<Parsed>,
}

impl LimitsExtension {
    fn cached(&self, query: &str) -> Option<ExecutableDocument> {
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        parsed.get(query).cloned()
    }

    fn keep(&self, query: &str, doc: &ExecutableDocument) {
        if query.len() <= MAX_CACHED_QUERY_BYTES {
            let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
            parsed.insert(query.into(), doc.clone());
            while parsed.iter().map(|(text, _)| text.len()).sum::<usize>() > MAX_CACHED_TOTAL_BYTES
            {
                parsed.remove_lru();
            }
        }
    }
}

fn invalid(message: impl Into<String>) -> ServerError {
    crate::ApiError::invalid(message).into()
}

/// What a document's operations select once every fragment spread is written out, as
/// validation and execution walk it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Expanded {
    fields: usize,
    aliases: usize,
}

impl Expanded {
    fn add(self, other: Expanded) -> Expanded {
        Expanded {
            fields: self.fields.saturating_add(other.fields),
            aliases: self.aliases.saturating_add(other.aliases),
        }
    }
}

/// [`Expanded`] in one pass over the document: each fragment is counted once, however
/// often it is spread, so a document that spreads fragments into one another over and over
/// costs its own size to check, not the size it expands to. A fragment that spreads itself
/// is an error (validation would refuse it too, but this runs first).
fn expanded(doc: &ExecutableDocument) -> Result<Expanded, String> {
    use async_graphql::parser::types::FragmentDefinition;
    use async_graphql::{Name, Positioned};
    use std::collections::HashMap;

    struct Walk<'a> {
        fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
        /// `None` while the fragment is being counted.
        counted: HashMap<&'a str, Option<Expanded>>,
    }

    impl<'a> Walk<'a> {
        /// `depth` counts as async-graphql's recursion-depth check does: a field with a
        /// selection, an inline fragment and a spread each go one deeper.
        fn set(&mut self, set: &'a SelectionSet, depth: usize) -> Result<Expanded, String> {
            if depth > MAX_RECURSION {
                return Err(format!(
                    "fragments and selections are nested deeper than {MAX_RECURSION}"
                ));
            }
            let mut total = Expanded::default();
            for s in &set.items {
                let one = match &s.node {
                    Selection::Field(f) => {
                        let field = Expanded {
                            fields: 1,
                            aliases: usize::from(f.node.alias.is_some()),
                        };
                        // A leaf goes no deeper.
                        let below = &f.node.selection_set.node;
                        if below.items.is_empty() {
                            field
                        } else {
                            field.add(self.set(below, depth + 1)?)
                        }
                    }
                    Selection::InlineFragment(i) => {
                        self.set(&i.node.selection_set.node, depth + 1)?
                    }
                    Selection::FragmentSpread(sp) => {
                        self.fragment(&sp.node.fragment_name.node, depth + 1)?
                    }
                };
                total = total.add(one);
            }
            Ok(total)
        }

        /// A fragment counted once is not walked again, however deep the next spread is:
        /// its deepest path was within the limit where it was first met, and a spread
        /// deeper than that is refused by async-graphql's own check afterwards.
        fn fragment(&mut self, name: &'a Name, depth: usize) -> Result<Expanded, String> {
            match self.counted.get(name.as_str()) {
                Some(Some(known)) => return Ok(*known),
                Some(None) => return Err(format!("fragment {name} spreads itself")),
                None => {}
            }
            // Refused here, not left to validation: counted as nothing, spreads of it
            // doubled at each of 32 levels would pass, and async-graphql's own depth check
            // (which runs before validation and walks every spread anew) would then take
            // exponential time (found by review).
            let Some(fragment) = self.fragments.get(name) else {
                return Err(format!("unknown fragment {name}"));
            };
            self.counted.insert(name.as_str(), None);
            let size = self.set(&fragment.node.selection_set.node, depth)?;
            self.counted.insert(name.as_str(), Some(size));
            Ok(size)
        }
    }

    let mut walk = Walk {
        fragments: &doc.fragments,
        counted: HashMap::new(),
    };
    let mut total = Expanded::default();
    for (_, op) in doc.operations.iter() {
        total = total.add(walk.set(&op.node.selection_set.node, 0)?);
    }
    // A fragment no operation reaches was measured by nothing here, yet validation walks
    // it (a chain of thousands cost it quadratic time, found by review); validation
    // refuses it anyway.
    if let Some(unused) = doc
        .fragments
        .keys()
        .find(|name| !walk.counted.contains_key(name.as_str()))
    {
        return Err(format!("fragment {unused} is never used"));
    }
    Ok(total)
}

/// Refuses a subscription whose root is not exactly one field written out: GraphQL's
/// single-root-field rule, which async-graphql does not check. It opens a stream for each
/// root field (one operation of a thousand `balanceChanged` fields, two units of complexity
/// each, held a thousand streams where the per-socket bound counts one; found by review),
/// and none for a fragment at the root (the subscription completed at once, silently).
fn single_root_field(doc: &ExecutableDocument) -> Result<(), String> {
    use async_graphql::parser::types::OperationType;
    let subscriptions = doc
        .operations
        .iter()
        .filter(|(_, op)| op.node.ty == OperationType::Subscription);
    for (_, op) in subscriptions {
        match op.node.selection_set.node.items.as_slice() {
            [one] if matches!(one.node, Selection::Field(_)) => {}
            [_] => return Err("a subscription's root field is written out, not spread".into()),
            _ => return Err("a subscription selects exactly one root field".into()),
        }
    }
    Ok(())
}

/// Refuses, with one error, a variable an operation uses (itself or through its fragments)
/// without declaring it, before validation: async-graphql reports one error for each
/// operation and each such variable, and a 60 KB document of 1,000 operations spreading one
/// fragment that used 3,000 undeclared variables made three million of them, and aborted
/// the server on memory (found by review). Each fragment's uses are gathered once. Runs
/// after [`expanded`], which refuses cycles and bounds the nesting.
fn undeclared_variable(doc: &ExecutableDocument) -> Result<(), String> {
    use async_graphql::parser::types::Directive;
    use async_graphql::{Name, Positioned};
    use std::collections::{HashMap, HashSet};

    /// Variables and fragments a selection set uses, fragments not followed.
    #[derive(Default)]
    struct Uses<'a> {
        variables: Vec<Name>,
        spreads: Vec<&'a str>,
    }

    // The parser's value type (which may hold variables) is not exported by name.
    macro_rules! variables {
        ($v:expr, $out:expr) => {{
            let out: &mut Vec<Name> = $out;
            let _ = $v.clone().into_const_with(|name| {
                out.push(name);
                Ok::<_, std::convert::Infallible>(Value::Null)
            });
        }};
    }
    fn directives(list: &[Positioned<Directive>], out: &mut Vec<Name>) {
        for d in list {
            for (_, v) in &d.node.arguments {
                variables!(v.node, out);
            }
        }
    }
    fn walk<'a>(set: &'a SelectionSet, uses: &mut Uses<'a>) {
        for s in &set.items {
            match &s.node {
                Selection::Field(f) => {
                    for (_, v) in &f.node.arguments {
                        variables!(v.node, &mut uses.variables);
                    }
                    directives(&f.node.directives, &mut uses.variables);
                    walk(&f.node.selection_set.node, uses);
                }
                Selection::InlineFragment(i) => {
                    directives(&i.node.directives, &mut uses.variables);
                    walk(&i.node.selection_set.node, uses);
                }
                Selection::FragmentSpread(sp) => {
                    directives(&sp.node.directives, &mut uses.variables);
                    uses.spreads.push(sp.node.fragment_name.node.as_str());
                }
            }
        }
    }

    let fragments: HashMap<&str, Uses> = doc
        .fragments
        .iter()
        .map(|(name, f)| {
            let mut uses = Uses::default();
            walk(&f.node.selection_set.node, &mut uses);
            (name.as_str(), uses)
        })
        .collect();
    for (name, op) in doc.operations.iter() {
        let declared: HashSet<&str> = op
            .node
            .variable_definitions
            .iter()
            .map(|d| d.node.name.node.as_str())
            .collect();
        let mut own = Uses::default();
        directives(&op.node.directives, &mut own.variables);
        walk(&op.node.selection_set.node, &mut own);
        let mut todo = own.spreads.clone();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut used = vec![&own];
        while let Some(fragment) = todo.pop() {
            if seen.insert(fragment)
                && let Some(uses) = fragments.get(fragment)
            {
                todo.extend(&uses.spreads);
                used.push(uses);
            }
        }
        let missing = used
            .iter()
            .flat_map(|u| &u.variables)
            .find(|v| !declared.contains(v.as_str()));
        if let Some(variable) = missing {
            let operation = name.map_or("the operation".to_owned(), |n| format!("operation {n}"));
            return Err(format!(
                "variable ${variable} is not declared by {operation}"
            ));
        }
    }
    Ok(())
}

/// What [`longest_string`] reports for a string holding U+0000, which no field accepts
/// (PostgreSQL cannot store it in text; SQLite would, so the two stores would differ).
const HOLDS_NUL: usize = usize::MAX;

/// Refuses the longest string found, or one holding U+0000.
fn check_strings(longest: usize) -> ServerResult<()> {
    match longest {
        HOLDS_NUL => Err(invalid("a string contains U+0000 (NUL)")),
        n if n > MAX_STRING_BYTES => Err(invalid("a string is longer than 64 KiB")),
        _ => Ok(()),
    }
}

fn longest_string(v: &Value) -> usize {
    match v {
        Value::String(s) if s.contains('\0') => HOLDS_NUL,
        Value::String(s) => s.len(),
        Value::List(items) => items.iter().map(longest_string).max().unwrap_or(0),
        Value::Object(map) => map.values().map(longest_string).max().unwrap_or(0),
        _ => 0,
    }
}

/// The longest string written in the document itself: arguments of fields and directives,
/// and variables' default values (literals count against the per-string limit too).
fn longest_literal(doc: &ExecutableDocument) -> usize {
    // The parser's value type (which may hold variables) is not exported by name.
    macro_rules! literal {
        ($v:expr) => {
            match $v
                .clone()
                .into_const_with(|_| Ok::<_, std::convert::Infallible>(Value::Null))
            {
                Ok(v) => longest_string(&v),
                Err(never) => match never {},
            }
        };
    }
    fn args<'a>(
        list: impl Iterator<
            Item = &'a async_graphql::Positioned<async_graphql::parser::types::Directive>,
        >,
    ) -> usize {
        list.flat_map(|d| d.node.arguments.iter())
            .map(|(_, v)| literal!(v.node))
            .max()
            .unwrap_or(0)
    }
    fn walk(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|s| match &s.node {
                Selection::Field(f) => f
                    .node
                    .arguments
                    .iter()
                    .map(|(_, v)| literal!(v.node))
                    .chain([
                        args(f.node.directives.iter()),
                        walk(&f.node.selection_set.node),
                    ])
                    .max()
                    .unwrap_or(0),
                Selection::InlineFragment(i) => {
                    args(i.node.directives.iter()).max(walk(&i.node.selection_set.node))
                }
                Selection::FragmentSpread(sp) => args(sp.node.directives.iter()),
            })
            .max()
            .unwrap_or(0)
    }
    let operations = doc.operations.iter().map(|(_, op)| {
        let defaults = op
            .node
            .variable_definitions
            .iter()
            .filter_map(|d| d.node.default_value.as_ref())
            .map(|v| longest_string(&v.node))
            .max()
            .unwrap_or(0);
        defaults
            .max(args(op.node.directives.iter()))
            .max(walk(&op.node.selection_set.node))
    });
    let fragments = doc
        .fragments
        .values()
        .map(|fr| args(fr.node.directives.iter()).max(walk(&fr.node.selection_set.node)));
    operations.chain(fragments).max().unwrap_or(0)
}

/// Errors without a code come from parsing or validation: bad input by definition.
fn with_codes(mut resp: Response) -> Response {
    for e in &mut resp.errors {
        let has_code = e
            .extensions
            .as_ref()
            .is_some_and(|x| x.get("code").is_some());
        if !has_code {
            e.extensions
                .get_or_insert_with(Default::default)
                .set("code", "INVALID_INPUT");
            let scalar = crate::scalars::ACCEPTED
                .iter()
                .find(|(name, _)| e.message.ends_with(&format!("expected type \"{name}\"")));
            if let Some((_, accepted)) = scalar {
                e.message = format!("{}: {accepted}", e.message);
            }
        }
    }
    resp
}

#[async_trait::async_trait]
impl Extension for LimitsExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        with_codes(next.run(ctx).await)
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream).map(with_codes).boxed()
    }

    /// Parses and checks the document here, before async-graphql's own checks (its
    /// recursion-depth check follows every fragment spread anew), and hands it on parsed.
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let doc = self.checked(&request.query, &request.variables)?;
        declared_only(&doc, &mut request.variables);
        request.set_parsed_query(doc);
        next.run(ctx, request).await
    }
}

/// Drops the variables no operation of `doc` declares: nothing reads them, yet a request
/// keeps its variables while it runs, a subscription for as long as it is open (found by
/// review: a list of a hundred thousand numbers under an unused name held forty times its
/// size in memory per subscription). The declared names are gathered once (found by
/// review: each variable sent was compared with each declared, a second of CPU for a
/// 200 KB request).
fn declared_only(doc: &ExecutableDocument, variables: &mut Variables) {
    let declared: std::collections::HashSet<&str> = doc
        .operations
        .iter()
        .flat_map(|(_, op)| &op.node.variable_definitions)
        .map(|d| d.node.name.node.as_str())
        .collect();
    variables.retain(|name, _| declared.contains(name.as_str()));
}

/// Brackets (`()`, `[]`, `{}`) nested deeper than this outside strings and comments are
/// refused before the document is parsed: the parser builds values by recursion with no
/// bound of its own, and a list nested 2,000 deep (4 KB of text) overflowed a worker's
/// stack and aborted the whole server (found by review). Selections go 12 deep at most.
pub const MAX_NESTING: usize = 64;

/// Parses a document whose brackets nest at most [`MAX_NESTING`] deep; INVALID_INPUT else.
pub fn parse(query: &str) -> ServerResult<ExecutableDocument> {
    if nesting(query) > MAX_NESTING {
        return Err(invalid(format!(
            "brackets are nested deeper than {MAX_NESTING}"
        )));
    }
    Ok(async_graphql::parser::parse_query(query)?)
}

/// Where the block string whose content starts at `from` ends (just past its closing
/// `"""`), if it is closed.
fn block_string_end(b: &[u8], mut from: usize) -> Option<usize> {
    while from < b.len() {
        if b[from..].starts_with(b"\"\"\"") {
            return Some(from + 3);
        }
        from += if b[from..].starts_with(b"\\\"\"\"") {
            4
        } else {
            1
        };
    }
    None
}

/// How deep brackets nest in `query`, outside strings, block strings and comments, read as
/// the parser reads them.
fn nesting(query: &str) -> usize {
    let b = query.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && !matches!(b[i], b'\n' | b'\r') {
                    i += 1;
                }
            }
            // A block string, when it is closed. An unclosed `"""` is what the parser reads
            // instead: `""`, then a string (found by review: the scan skipped to the end,
            // and the brackets after it reached the parser uncounted).
            b'"' if b[i..].starts_with(b"\"\"\"") => match block_string_end(b, i + 3) {
                Some(end) => i = end - 1, // the closing quotes' last, passed below
                None => i += 1,           // `""`: the next quote opens a string
            },
            b'"' => {
                i += 1;
                while i < b.len() && !matches!(b[i], b'"' | b'\n' | b'\r') {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

impl LimitsExtension {
    fn checked(&self, query: &str, variables: &Variables) -> ServerResult<ExecutableDocument> {
        if query.len() > MAX_BODY_BYTES {
            return Err(invalid("the query is larger than 256 KiB"));
        }
        check_strings(variables.values().map(longest_string).max().unwrap_or(0))?;
        if let Some(doc) = self.cached(query) {
            return Ok(doc);
        }
        let doc = parse(query)?;
        check_strings(longest_literal(&doc))?;
        let size = expanded(&doc).map_err(invalid)?;
        single_root_field(&doc).map_err(invalid)?;
        undeclared_variable(&doc).map_err(invalid)?;
        if size.aliases > MAX_ALIASES {
            return Err(invalid(format!("more than {MAX_ALIASES} aliases")));
        }
        if size.fields > MAX_SELECTED_FIELDS {
            return Err(invalid(format!(
                "more than {MAX_SELECTED_FIELDS} fields once fragments are spread"
            )));
        }
        if size.fields <= MAX_CACHED_FIELDS {
            self.keep(query, &doc);
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};

    struct Query;

    #[Object]
    impl Query {
        async fn echo(&self, s: String) -> String {
            s
        }
    }

    fn schema() -> (Schema<Query, EmptyMutation, EmptySubscription>, Arc<Parsed>) {
        let limits = Limits::default();
        let parsed = limits.parsed.clone();
        let schema = Schema::build(Query, EmptyMutation, EmptySubscription)
            .extension(limits)
            .finish();
        (schema, parsed)
    }

    fn cached(parsed: &Parsed) -> usize {
        parsed.lock().unwrap().len()
    }

    fn echo(s: &str) -> Request {
        Request::new("query($s: String!) { echo(s: $s) }")
            .variables(Variables::from_json(serde_json::json!({ "s": s })))
    }

    #[tokio::test]
    async fn a_cached_document_runs_with_each_requests_own_variables() {
        let (schema, parsed) = schema();
        let first = schema.execute(echo("one")).await;
        let second = schema.execute(echo("two")).await;
        assert_eq!(first.data.into_json().unwrap()["echo"], "one");
        assert_eq!(second.data.into_json().unwrap()["echo"], "two");
        assert_eq!(cached(&parsed), 1);
    }

    #[tokio::test]
    async fn checks_hold_whether_or_not_the_document_is_cached() {
        let (schema, parsed) = schema();
        // Refused documents are not kept: the second try is refused the same way.
        let aliases: String = (0..=MAX_ALIASES)
            .map(|i| format!("a{i}: echo(s: \"x\") "))
            .collect();
        let query = format!("{{ {aliases} }}");
        for _ in 0..2 {
            let resp = schema.execute(Request::new(query.clone())).await;
            assert_eq!(resp.errors.len(), 1, "{:?}", resp.errors);
            assert_eq!(resp.errors[0].message, "more than 100 aliases");
        }
        assert_eq!(cached(&parsed), 0);
        // The variables' limit applies to a cached document too.
        assert!(schema.execute(echo("short")).await.errors.is_empty());
        let resp = schema
            .execute(echo(&"x".repeat(MAX_STRING_BYTES + 1)))
            .await;
        assert_eq!(resp.errors[0].message, "a string is longer than 64 KiB");
        let code = resp.errors[0].extensions.as_ref().unwrap().get("code");
        assert_eq!(code, Some(&Value::from("INVALID_INPUT")));
    }

    /// Found by review: a threadId holding U+0000 reached the commit, where PostgreSQL
    /// refused the whole group commit (and so every other wallet's batch in it).
    #[tokio::test]
    async fn a_string_holding_nul_is_refused_before_anything_runs() {
        let (schema, _) = schema();
        for resp in [
            schema.execute(echo("a\0b")).await,
            schema.execute(r#"{ echo(s: "a\u0000b") }"#).await,
        ] {
            assert_eq!(resp.errors.len(), 1, "{:?}", resp.errors);
            assert_eq!(resp.errors[0].message, "a string contains U+0000 (NUL)");
            let code = resp.errors[0].extensions.as_ref().unwrap().get("code");
            assert_eq!(code, Some(&Value::from("INVALID_INPUT")));
        }
        assert!(schema.execute(echo("a\tb")).await.errors.is_empty());
    }

    #[tokio::test]
    async fn the_cache_is_bounded_in_entries_and_query_size() {
        let (schema, parsed) = schema();
        for i in 0..PARSED_DOCUMENTS + 10 {
            let resp = schema.execute(format!("{{ echo(s: \"{i}\") }}")).await;
            assert!(resp.errors.is_empty(), "{:?}", resp.errors);
        }
        assert_eq!(cached(&parsed), PARSED_DOCUMENTS);
        parsed.lock().unwrap().clear();
        let padding = " ".repeat(MAX_CACHED_QUERY_BYTES);
        let resp = schema
            .execute(format!("{{ echo(s: \"long\") {padding}}}"))
            .await;
        assert_eq!(resp.data.into_json().unwrap()["echo"], "long");
        assert_eq!(cached(&parsed), 0);
        // The texts kept add up to at most MAX_CACHED_TOTAL_BYTES.
        parsed.lock().unwrap().clear();
        let padding = " ".repeat(MAX_CACHED_QUERY_BYTES - 100);
        for i in 0..40 {
            let resp = schema
                .execute(format!("{{ echo(s: \"{i}\") {padding}}}"))
                .await;
            assert!(resp.errors.is_empty(), "{:?}", resp.errors);
        }
        let kept: usize = parsed.lock().unwrap().iter().map(|(t, _)| t.len()).sum();
        assert!(
            kept <= MAX_CACHED_TOTAL_BYTES && kept > MAX_CACHED_TOTAL_BYTES / 2,
            "{kept}"
        );
        parsed.lock().unwrap().clear();
        // Nor one that selects many fields, however short its text (found by review).
        let many = "echo(s: \"x\") ".repeat(MAX_CACHED_FIELDS + 1);
        let resp = schema.execute(format!("{{ {many}}}")).await;
        assert!(resp.errors.is_empty(), "{:?}", resp.errors);
        assert_eq!(cached(&parsed), 0);
    }

    /// Found by review: a list nested 2,000 deep (4 KB) overflowed the parser's stack and
    /// aborted the server. Brackets nested past MAX_NESTING are refused before parsing;
    /// ones inside strings, block strings and comments do not count.
    #[tokio::test]
    async fn deeply_nested_brackets_are_refused_before_parsing() {
        let (schema, _) = schema();
        let deep = format!(
            "{{ echo(s: {}\"x\"{}) }}",
            "[".repeat(5_000),
            "]".repeat(5_000)
        );
        let resp = schema.execute(deep).await;
        assert_eq!(resp.errors.len(), 1, "{:?}", resp.errors);
        assert_eq!(resp.errors[0].message, "brackets are nested deeper than 64");
        let code = resp.errors[0].extensions.as_ref().unwrap().get("code");
        assert_eq!(code, Some(&Value::from("INVALID_INPUT")));
        assert!(
            parse(&format!(
                "{{ echo(s: {}\"x\"{}) }}",
                "[".repeat(60),
                "]".repeat(60)
            ))
            .is_ok()
        );
        let brackets = "[{(".repeat(100);
        for quiet in [
            format!("{{ echo(s: \"{brackets}\") }}"),
            format!("{{ echo(s: \"\\\" {brackets}\") }}"),
            format!("{{ echo(s: \"\"\"{brackets} \\\"\"\" {brackets}\"\"\") }}"),
            format!("# {brackets}\n{{ echo(s: \"x\") }}"),
        ] {
            assert_eq!(nesting(&quiet), 2, "{quiet}");
            let resp = schema.execute(quiet.clone()).await;
            assert!(resp.errors.is_empty(), "{quiet}: {:?}", resp.errors);
        }
    }

    /// Found by review: an unclosed `"""` hid everything after it from the scan, while
    /// the parser reads `""` and goes on.
    #[test]
    fn an_unclosed_block_string_hides_no_brackets() {
        let deep = format!(
            "{{ echo(s: [\"\"\"\"{}{}]) }}",
            "[".repeat(5_000),
            "]".repeat(5_000)
        );
        assert!(nesting(&deep) > MAX_NESTING);
        assert!(parse(&deep).is_err());
        let closed = format!("{{ echo(s: \"\"\"{}\"\"\") }}", "[".repeat(5_000));
        assert_eq!(nesting(&closed), 2);
    }

    /// Found by review: async-graphql reports one error per operation and undeclared
    /// variable its fragments use; 1,000 operations spreading a fragment of 3,000 made
    /// three million and aborted the server. One error now, before validation.
    #[tokio::test]
    async fn an_undeclared_variable_is_one_error() {
        let (schema, _) = schema();
        let uses: Vec<String> = (0..300).map(|i| format!("a{i}: echo(s: $v{i})")).collect();
        let ops: Vec<String> = (0..300).map(|i| format!("query o{i} {{ ...F }}")).collect();
        let doc = format!(
            "{} fragment F on Query {{ {} }}",
            ops.join(" "),
            uses.join(" ")
        );
        let resp = schema.execute(Request::new(doc).operation_name("o0")).await;
        assert_eq!(resp.errors.len(), 1, "{:?}", &resp.errors[..1]);
        let message = &resp.errors[0].message;
        assert!(
            message.contains("is not declared by operation o"),
            "{message}"
        );
        // Declared through a fragment, in every operation: fine; one operation lacking it
        // is named.
        let ok = "query A($s: String!) { ...G } query B($s: String!) { ...G } fragment G on Query { echo(s: $s) }";
        let request = Request::new(ok)
            .operation_name("B")
            .variables(Variables::from_json(serde_json::json!({ "s": "x" })));
        let resp = schema.execute(request).await;
        assert!(resp.errors.is_empty(), "{:?}", resp.errors);
        let lacking =
            "query A($s: String!) { ...G } query B { ...G } fragment G on Query { echo(s: $s) }";
        let resp = schema
            .execute(Request::new(lacking).operation_name("A"))
            .await;
        assert_eq!(resp.errors.len(), 1, "{:?}", resp.errors);
        assert_eq!(
            resp.errors[0].message,
            "variable $s is not declared by operation B"
        );
    }

    /// Found by review: every variable sent was compared with every one declared.
    #[test]
    fn undeclared_variables_are_dropped_and_declared_ones_kept() {
        let doc = parse("query P($a: String, $b: String) { echo(s: $a) } query Q($c: Int) { x }")
            .unwrap();
        let mut variables = Variables::from_json(serde_json::json!({
            "a": "1", "b": "2", "c": 3, "d": 4, "e": [5]
        }));
        declared_only(&doc, &mut variables);
        let mut kept: Vec<_> = variables.keys().map(|k| k.to_string()).collect();
        kept.sort();
        assert_eq!(kept, ["a", "b", "c"]);
    }

    /// Found by review: the alias count followed every fragment spread again, with no
    /// memory and no cycle check, before validation ran: `fragment F on Query { ...F ...F }`
    /// took 2^65 steps and held a runtime thread for good.
    #[tokio::test]
    async fn spread_fragments_are_checked_in_the_documents_own_size() {
        let (schema, _) = schema();
        // On a thread of its own: a walk that never yields would hang a timeout on this
        // runtime, where a channel's timeout fails the test.
        let run = |q: String| {
            let schema = schema.clone();
            async move {
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    let _ = tx.send(runtime.block_on(schema.execute(Request::new(q))));
                });
                rx.recv_timeout(std::time::Duration::from_secs(10))
                    .expect("checked within 10 s")
            }
        };
        let resp = run("{ ...F } fragment F on Query { ...F ...F }".into()).await;
        assert_eq!(resp.errors[0].message, "fragment F spreads itself");
        // Twenty-five fragments, each spreading the next four times: 4^25 fields once
        // spread, within async-graphql's recursion depth (32), whose own check walks each
        // spread anew.
        let resp = run(fan_out(25, "a: echo(s: \"x\")")).await;
        assert_eq!(resp.errors[0].message, "more than 100 aliases");
        let resp = run(fan_out(25, "echo(s: \"x\")")).await;
        assert_eq!(
            resp.errors[0].message,
            format!("more than {MAX_SELECTED_FIELDS} fields once fragments are spread")
        );
        let code = resp.errors[0].extensions.as_ref().unwrap().get("code");
        assert_eq!(code, Some(&Value::from("INVALID_INPUT")));
        // A fragment spread a few times is fine.
        let resp = run(fan_out(3, "echo(s: \"x\")")).await;
        assert!(resp.errors.is_empty(), "{:?}", resp.errors);
    }

    /// `levels` fragments, each spreading the next four times, the last selecting `leaf`.
    fn fan_out(levels: usize, leaf: &str) -> String {
        let mut q = String::from("{ ...F0 }");
        for i in 0..levels {
            q += &format!(
                " fragment F{i} on Query {{ ...F{n} ...F{n} ...F{n} ...F{n} }}",
                n = i + 1
            );
        }
        q + &format!(" fragment F{levels} on Query {{ {leaf} }}")
    }

    #[test]
    fn expanded_counts_fields_and_aliases_of_each_spread() {
        let doc = async_graphql::parser::parse_query(
            "{ a: echo(s: \"1\") ...F ...F } fragment F on Query { b: echo(s: \"2\") echo(s: \"3\") }",
        )
        .unwrap();
        assert_eq!(
            expanded(&doc),
            Ok(Expanded {
                fields: 5,
                aliases: 3
            })
        );
    }

    /// Found by review: a straight chain of fragments, each spreading the next, was
    /// followed by one recursive call per link before async-graphql's own recursion-depth
    /// check ran: a 70 KB query overflowed a worker's stack and aborted the whole server.
    #[tokio::test]
    async fn a_long_chain_of_fragments_is_refused_without_following_it() {
        let (schema, _) = schema();
        let chain = |links: usize| {
            let mut q = String::from("{ ...F0 }");
            for i in 0..links {
                q += &format!(" fragment F{i} on Query {{ ...F{} }}", i + 1);
            }
            q + &format!(" fragment F{links} on Query {{ echo(s: \"x\") }}")
        };
        let resp = schema.execute(chain(6_000)).await;
        assert_eq!(resp.errors.len(), 1, "{:?}", resp.errors);
        assert_eq!(
            resp.errors[0].message,
            "fragments and selections are nested deeper than 32"
        );
        let code = resp.errors[0].extensions.as_ref().unwrap().get("code");
        assert_eq!(code, Some(&Value::from("INVALID_INPUT")));
        // As deep as async-graphql's own check allows still runs: the last fragment is
        // 32 spreads deep, and its leaf field no deeper.
        let resp = schema.execute(chain(31)).await;
        assert!(resp.errors.is_empty(), "{:?}", resp.errors);
        let resp = schema.execute(chain(32)).await;
        assert_eq!(resp.errors.len(), 1, "{:?}", resp.errors);
    }

    #[test]
    fn variables_no_operation_declares_are_dropped() {
        let doc = async_graphql::parser::parse_query(
            "query A($s: String!) { echo(s: $s) } query B($t: String) { echo(s: \"b\") }",
        )
        .unwrap();
        let mut variables = Variables::from_json(serde_json::json!({
            "s": "kept", "t": null, "unused": [0, 0, 0, 0],
        }));
        declared_only(&doc, &mut variables);
        let names: Vec<&str> = variables.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["s", "t"]);
    }

    /// Found by review: fragments no operation spreads were measured by nothing, and a
    /// chain of thousands of them cost validation quadratic time.
    #[tokio::test]
    async fn a_fragment_no_operation_uses_is_refused_before_validation() {
        let (schema, _) = schema();
        let q = "{ echo(s: \"x\") } fragment A on Query { ...B } fragment B on Query { echo(s: \"y\") }";
        let resp = schema.execute(q).await;
        assert_eq!(resp.errors.len(), 1, "{:?}", resp.errors);
        assert!(
            resp.errors[0].message.ends_with("is never used"),
            "{:?}",
            resp.errors
        );
        let code = resp.errors[0].extensions.as_ref().unwrap().get("code");
        assert_eq!(code, Some(&Value::from("INVALID_INPUT")));
    }

    /// Found by review: a spread of an unknown fragment counted as nothing, so fragments
    /// spreading the next one twice, 31 levels down to one spreading an unknown fragment,
    /// passed these checks; async-graphql's recursion-depth check, which runs before
    /// validation and follows every spread anew, then walked 2³¹ selections.
    #[tokio::test]
    async fn spreads_of_an_unknown_fragment_are_refused_before_they_are_walked() {
        let (schema, _) = schema();
        // Four levels here (31 would keep the old code busy for minutes, not fail it).
        let mut q = String::from("{ ...F0 }");
        for i in 0..4 {
            q += &format!(" fragment F{i} on Query {{ ...F{n} ...F{n} }}", n = i + 1);
        }
        q += " fragment F4 on Query { ...Nope ...Nope }";
        let resp = schema.execute(q).await;
        assert_eq!(resp.errors.len(), 1, "{:?}", resp.errors);
        assert_eq!(resp.errors[0].message, "unknown fragment Nope");
        let code = resp.errors[0].extensions.as_ref().unwrap().get("code");
        assert_eq!(code, Some(&Value::from("INVALID_INPUT")));
    }
}
