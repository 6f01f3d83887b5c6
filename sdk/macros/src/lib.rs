//! The `#[gust_sdk::agent]` attribute. It only needs the function's name, so it reads the
//! token stream directly instead of pulling a full Rust parser into every guest build.

use proc_macro::{Delimiter, Group, Ident, Span, TokenStream, TokenTree};

/// Exports the marked function as the agent's `run`. See `gust_sdk` for the contract.
#[proc_macro_attribute]
pub fn agent(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return compile_error("#[gust_sdk::agent] takes no arguments", Span::call_site());
    }
    let Some(name) = function_name(&item) else {
        return compile_error(
            "#[gust_sdk::agent] goes on a function: `fn run(input: In, ctx: &gust_sdk::Context) -> Result<Out, gust_sdk::Error>`",
            Span::call_site(),
        );
    };
    let glue: TokenStream = format!(
        "const _: () = {{
            struct __GustAgent;
            impl ::gust_sdk::__private::Guest for __GustAgent {{
                fn run(
                    request: ::gust_sdk::__private::bindings::gust::agent::invocation::Request,
                ) -> ::core::result::Result<
                    ::gust_sdk::__private::bindings::gust::agent::invocation::Response,
                    ::gust_sdk::__private::bindings::gust::agent::invocation::RunError,
                > {{
                    ::gust_sdk::__private::dispatch(request, {name})
                }}
            }}
            ::gust_sdk::__private::export!(__GustAgent with_types_in ::gust_sdk::__private::bindings);
        }};"
    )
    .parse()
    .expect("the glue is valid Rust");
    let mut out = item;
    out.extend(glue);
    out
}

/// The identifier after the top-level `fn` keyword, skipping attributes, visibility and
/// qualifiers such as `pub(crate)`.
fn function_name(item: &TokenStream) -> Option<Ident> {
    let mut tokens = item.clone().into_iter();
    while let Some(token) = tokens.next() {
        if let TokenTree::Ident(ident) = &token
            && ident.to_string() == "fn"
        {
            return match tokens.next() {
                Some(TokenTree::Ident(name)) => Some(name),
                _ => None,
            };
        }
    }
    None
}

fn compile_error(message: &str, span: Span) -> TokenStream {
    let mut literal = proc_macro::Literal::string(message);
    literal.set_span(span);
    let args = TokenStream::from(TokenTree::Literal(literal));
    let mut out: TokenStream = "::core::compile_error!".parse().expect("valid path");
    out.extend([TokenTree::Group(Group::new(Delimiter::Parenthesis, args))]);
    out.extend("; ".parse::<TokenStream>().expect("valid token"));
    out
}
