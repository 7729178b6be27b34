//! `qforge recipes`: the recipes built into qforge ([`recipe::SHIPPED`]), one a line, or one
//! recipe's YAML.

use crate::recipe::{self, SHIPPED};
use crate::{Error, Result};
use std::process::ExitCode;

/// `qforge recipes` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    qforge recipes\n  \
    qforge recipes --show w4a16 > my_recipe.yaml\n  \
    qforge quantize --model fixtures/tiny-random-llama --recipe fp8_dynamic --output out/tiny-fp8")]
pub struct RecipesArgs {
    /// Print this recipe's YAML (to copy and edit) instead of the list.
    #[arg(long, value_name = "NAME")]
    pub show: Option<String>,
}

/// Runs `qforge recipes`.
pub fn run(args: &RecipesArgs) -> Result<ExitCode> {
    match &args.show {
        Some(name) => {
            let r = recipe::find_shipped(name).ok_or_else(|| {
                Error::Recipe(format!(
                    "no recipe {name} is built in (built in: {})",
                    recipe::shipped_names()
                ))
            })?;
            print!("{}", r.yaml);
        }
        None => print!("{}", table()),
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per recipe: name, scheme, what it does.
fn table() -> String {
    let name_w = SHIPPED.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let scheme_w = SHIPPED.iter().map(|r| r.scheme().len()).max().unwrap_or(0);
    let mut out = format!("{:name_w$}  {:scheme_w$}  DESCRIPTION\n", "NAME", "SCHEME");
    for r in SHIPPED {
        let line = format!(
            "{:name_w$}  {:scheme_w$}  {}",
            r.name,
            r.scheme(),
            r.summary()
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(
        "\nUse one with `qforge quantize --recipe NAME`; `qforge recipes --show NAME` prints its \
         YAML.\n",
    );
    out
}
