//! Request limits (SPEC 10): depth, complexity, aliases and string sizes, all refused with
//! INVALID_INPUT before anything runs; and the rule that every error carries a code.

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest, NextSubscribe,
};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ErrorExtensionValues, Response, ServerError, ServerResult, Value, Variables};
use futures::StreamExt;
use futures::stream::BoxStream;

pub const MAX_DEPTH: usize = 12;
pub const MAX_COMPLEXITY: usize = 2000;
pub const MAX_ALIASES: usize = 100;
pub const MAX_BATCH: usize = 10;
pub const MAX_BODY_BYTES: usize = 256 * 1024;
pub const MAX_STRING_BYTES: usize = 64 * 1024;

pub struct Limits;

impl ExtensionFactory for Limits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(LimitsExtension)
    }
}

struct LimitsExtension;

fn invalid(message: impl Into<String>) -> ServerError {
    let mut e = ServerError::new(message, None);
    let mut ext = ErrorExtensionValues::default();
    ext.set("code", "INVALID_INPUT");
    e.extensions = Some(ext);
    e
}

fn count_aliases(doc: &ExecutableDocument) -> usize {
    fn walk(set: &SelectionSet, doc: &ExecutableDocument, depth: usize) -> usize {
        // Fragments can nest; the depth limit bounds real documents, this bounds the walk.
        if depth > 64 {
            return 0;
        }
        set.items
            .iter()
            .map(|s| match &s.node {
                Selection::Field(f) => {
                    usize::from(f.node.alias.is_some())
                        + walk(&f.node.selection_set.node, doc, depth + 1)
                }
                Selection::InlineFragment(i) => walk(&i.node.selection_set.node, doc, depth + 1),
                Selection::FragmentSpread(sp) => doc
                    .fragments
                    .get(&sp.node.fragment_name.node)
                    .map_or(0, |fr| walk(&fr.node.selection_set.node, doc, depth + 1)),
            })
            .sum()
    }
    doc.operations
        .iter()
        .map(|(_, op)| walk(&op.node.selection_set.node, doc, 0))
        .sum()
}

fn longest_string(v: &Value) -> usize {
    match v {
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

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        if query.len() > MAX_BODY_BYTES {
            return Err(invalid("the query is larger than 256 KiB"));
        }
        if variables.values().map(longest_string).max().unwrap_or(0) > MAX_STRING_BYTES {
            return Err(invalid("a string is longer than 64 KiB"));
        }
        let doc = next.run(ctx, query, variables).await?;
        if longest_literal(&doc) > MAX_STRING_BYTES {
            return Err(invalid("a string is longer than 64 KiB"));
        }
        if count_aliases(&doc) > MAX_ALIASES {
            return Err(invalid(format!("more than {MAX_ALIASES} aliases")));
        }
        Ok(doc)
    }
}
