//! The tasks of lm_eval's `openllm` group (`lm_eval/tasks/benchmarks/openllm.yaml`, 0.4.x),
//! their prompts and answers. Each rule names the lm_eval file it comes from; docs/eval.md
//! lists them.

use serde_json::Value;

use super::data::DatasetId;
use crate::{Error, Result};

/// How a task is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `output_type: multiple_choice`: one log-likelihood per choice.
    MultipleChoice,
    /// `output_type: generate_until`: greedy generation, then regex extraction.
    Generate,
}

/// How few-shot examples are drawn (`fewshot_config.sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// `default`: `random.Random(1234).sample` over the few-shot split, one generator per
    /// task advancing document after document (`lm_eval/api/samplers.py`).
    Random,
    /// `first_n`: the split's first documents (MMLU).
    FirstN,
}

/// One lm_eval task.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// lm_eval's task name, e.g. `mmlu_anatomy`.
    pub name: String,
    pub family: Family,
    pub dataset: DatasetId<'static>,
    /// The split that is evaluated (`test_split`, else `validation_split`).
    pub eval_split: &'static str,
    /// Where few-shot examples come from (`fewshot_split` as the openllm group sets it).
    pub fewshot_split: &'static str,
    /// Whether the sampler draws `n + 1` and drops the evaluated document: lm_eval passes
    /// `eval_doc` when `fewshot_split == test_split` (both unset counts as equal).
    pub exclude_self: bool,
    pub sampler: Sampler,
    /// The shot count of the openllm group.
    pub num_fewshot: usize,
    pub description: String,
}

/// The six task families; MMLU is one family of 57 tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    ArcChallenge,
    Hellaswag,
    Winogrande,
    Mmlu,
    TruthfulqaMc2,
    Gsm8k,
}

impl Family {
    pub fn kind(self) -> Kind {
        match self {
            Family::Gsm8k => Kind::Generate,
            _ => Kind::MultipleChoice,
        }
    }

    /// The group name the report uses (MMLU's subjects aggregate into `mmlu`).
    pub fn group(self) -> &'static str {
        match self {
            Family::ArcChallenge => "arc_challenge",
            Family::Hellaswag => "hellaswag",
            Family::Winogrande => "winogrande",
            Family::Mmlu => "mmlu",
            Family::TruthfulqaMc2 => "truthfulqa_mc2",
            Family::Gsm8k => "gsm8k",
        }
    }

    /// Metrics reported, in order (`metric_list`; GSM8K's two filters).
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Family::ArcChallenge | Family::Hellaswag => &["acc", "acc_norm"],
            Family::Winogrande | Family::Mmlu => &["acc"],
            Family::TruthfulqaMc2 => &["mc2"],
            Family::Gsm8k => &["exact_match,strict-match", "exact_match,flexible-extract"],
        }
    }
}

/// The task names `--tasks` accepts besides `openllm` and `mmlu_<subject>`.
pub const GROUPS: [&str; 6] = [
    "arc_challenge",
    "hellaswag",
    "winogrande",
    "mmlu",
    "truthfulqa_mc2",
    "gsm8k",
];

/// MMLU's 57 subjects (`lm_eval/tasks/mmlu/default/mmlu_*.yaml`, `dataset_name`).
pub const MMLU_SUBJECTS: [&str; 57] = [
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
];

/// Expands `--tasks` (comma-separated) into tasks, in order, without repeats.
pub fn resolve(list: &str) -> Result<Vec<Task>> {
    let mut out: Vec<Task> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let tasks = match name {
            "openllm" => GROUPS
                .iter()
                .flat_map(|g| expand(g).unwrap_or_default())
                .collect(),
            _ => expand(name).ok_or_else(|| unknown(name))?,
        };
        for t in tasks {
            if !out.iter().any(|o| o.name == t.name) {
                out.push(t);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Eval("--tasks names no task".into()));
    }
    Ok(out)
}

fn unknown(name: &str) -> Error {
    Error::Eval(format!(
        "unknown task '{name}': known tasks are openllm (all six), {}, and mmlu_<subject> (e.g. mmlu_anatomy)",
        GROUPS.join(", ")
    ))
}

fn expand(name: &str) -> Option<Vec<Task>> {
    let task = |family,
                path,
                config: Option<&'static str>,
                eval_split,
                fewshot_split,
                exclude_self,
                shots| Task {
        name: name.to_string(),
        family,
        dataset: DatasetId { path, name: config },
        eval_split,
        fewshot_split,
        exclude_self,
        sampler: Sampler::Random,
        num_fewshot: shots,
        description: String::new(),
    };
    Some(match name {
        // arc/arc_easy.yaml + arc_challenge.yaml; openllm: fewshot_split train, 25 shots.
        "arc_challenge" => vec![task(
            Family::ArcChallenge,
            "allenai/ai2_arc",
            Some("ARC-Challenge"),
            "test",
            "train",
            false,
            25,
        )],
        // hellaswag/hellaswag.yaml: validation; openllm: fewshot_split train, 10 shots.
        "hellaswag" => vec![task(
            Family::Hellaswag,
            "Rowan/hellaswag",
            None,
            "validation",
            "train",
            false,
            10,
        )],
        // winogrande/default.yaml: winogrande_xl, validation; openllm: train, 5 shots.
        "winogrande" => vec![task(
            Family::Winogrande,
            "allenai/winogrande",
            Some("winogrande_xl"),
            "validation",
            "train",
            false,
            5,
        )],
        // truthfulqa/truthfulqa_mc1.yaml (included by mc2): validation only, 0 shots; with
        // shots the pool is the validation split itself, the document excluded.
        "truthfulqa_mc2" => vec![task(
            Family::TruthfulqaMc2,
            "truthfulqa/truthful_qa",
            Some("multiple_choice"),
            "validation",
            "validation",
            true,
            0,
        )],
        // gsm8k/gsm8k.yaml: main, test, fewshot_split train, 5 shots.
        "gsm8k" => vec![task(
            Family::Gsm8k,
            "openai/gsm8k",
            Some("main"),
            "test",
            "train",
            false,
            5,
        )],
        "mmlu" => MMLU_SUBJECTS.iter().map(|s| mmlu(s)).collect(),
        _ => {
            let subject = name.strip_prefix("mmlu_")?;
            let s = MMLU_SUBJECTS.iter().find(|&&s| s == subject)?;
            vec![mmlu(s)]
        }
    })
}

/// mmlu/default/_default_template_yaml: cais/mmlu, test, few-shot from dev with `first_n`.
fn mmlu(subject: &'static str) -> Task {
    Task {
        name: format!("mmlu_{subject}"),
        family: Family::Mmlu,
        dataset: DatasetId {
            path: "cais/mmlu",
            name: Some(subject),
        },
        eval_split: "test",
        fewshot_split: "dev",
        exclude_self: false,
        sampler: Sampler::FirstN,
        num_fewshot: 5,
        description: format!(
            "The following are multiple choice questions (with answers) about {}.\n\n",
            subject.replace('_', " ")
        ),
    }
}

/// A document's answer: an index into its choices, or text (GSM8K, Winogrande's suffix).
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Index(usize),
    Text(String),
}

/// A document as lm_eval's prompt functions see it, after `process_docs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `doc_to_text`; Winogrande: one context per choice (`multiple_input`).
    pub text: Vec<String>,
    /// `doc_to_choice` (the continuations; Winogrande: its single suffix).
    pub choices: Vec<String>,
    pub target: Target,
    /// truthfulqa_mc2: the label of each choice.
    pub labels: Vec<bool>,
}

fn field<'a>(doc: &'a Value, key: &str) -> Result<&'a Value> {
    doc.get(key)
        .ok_or_else(|| Error::Dataset(format!("a document has no '{key}' field")))
}

fn string(doc: &Value, key: &str) -> Result<String> {
    field(doc, key)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Dataset(format!("field '{key}' is not a string")))
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>> {
    let arr = field(v, key)?
        .as_array()
        .ok_or_else(|| Error::Dataset(format!("field '{key}' is not a list")))?;
    arr.iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::Dataset(format!("field '{key}' holds a non-string")))
        })
        .collect()
}

fn index(i: usize, n: usize, what: &str) -> Result<Target> {
    if i < n {
        Ok(Target::Index(i))
    } else {
        Err(Error::Dataset(format!(
            "{what} {i} is not one of the {n} choices"
        )))
    }
}

impl Family {
    /// Applies the task's `doc_to_text`, `doc_to_choice` and `doc_to_target` to a raw
    /// dataset row (with `process_docs` first where the task has one).
    pub fn prepare(self, doc: &Value) -> Result<Prepared> {
        let plain = |text: String, choices: Vec<String>, target| Prepared {
            text: vec![text],
            choices,
            target,
            labels: Vec::new(),
        };
        match self {
            Family::ArcChallenge => {
                // doc_to_text "Question: {{question}}\nAnswer:", choices.text,
                // target choices.label.index(answerKey).
                let choices = field(doc, "choices")?;
                let texts = strings(choices, "text")?;
                let labels = strings(choices, "label")?;
                let key = string(doc, "answerKey")?;
                let gold = labels.iter().position(|l| *l == key).ok_or_else(|| {
                    Error::Dataset(format!("answerKey '{key}' is not among the labels"))
                })?;
                let text = format!("Question: {}\nAnswer:", string(doc, "question")?);
                let n = texts.len();
                Ok(plain(text, texts, index(gold, n, "answer")?))
            }
            Family::Hellaswag => {
                // hellaswag/utils.py process_docs.
                let ctx = format!(
                    "{} {}",
                    string(doc, "ctx_a")?,
                    capitalize(&string(doc, "ctx_b")?)
                );
                let query =
                    hellaswag_preprocess(&format!("{}: {ctx}", string(doc, "activity_label")?));
                let endings = strings(doc, "endings")?;
                let choices: Vec<String> =
                    endings.iter().map(|e| hellaswag_preprocess(e)).collect();
                let label = field(doc, "label")?;
                let gold = label
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .or_else(|| label.as_u64().map(|n| n as usize))
                    .ok_or_else(|| Error::Dataset("hellaswag 'label' is not a number".into()))?;
                let n = choices.len();
                Ok(plain(query, choices, index(gold, n, "label")?))
            }
            Family::Winogrande => {
                // winogrande/preprocess_winogrande.py: the option fills the blank in the
                // context; the text after the blank is the one continuation.
                let sentence = string(doc, "sentence")?;
                let blank = sentence
                    .find('_')
                    .ok_or_else(|| Error::Dataset("winogrande sentence has no '_'".into()))?;
                let options = [string(doc, "option1")?, string(doc, "option2")?];
                let gold = match string(doc, "answer")?.as_str() {
                    "1" => 0,
                    "2" => 1,
                    a => {
                        return Err(Error::Dataset(format!(
                            "winogrande answer '{a}' is not 1 or 2"
                        )))
                    }
                };
                let suffix = sentence[blank + 1..].trim().to_string();
                Ok(Prepared {
                    text: options
                        .iter()
                        .map(|o| format!("{}{o}", &sentence[..blank]))
                        .collect(),
                    choices: vec![suffix.clone()],
                    target: Target::Index(gold),
                    labels: Vec::new(),
                })
            }
            Family::Mmlu => {
                // mmlu/default/_default_template_yaml.
                let c = strings(doc, "choices")?;
                if c.len() != 4 {
                    return Err(Error::Dataset("an MMLU document needs 4 choices".into()));
                }
                let text = format!(
                    "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
                    py_strip(&string(doc, "question")?),
                    c[0],
                    c[1],
                    c[2],
                    c[3]
                );
                let gold = field(doc, "answer")?
                    .as_u64()
                    .ok_or_else(|| Error::Dataset("MMLU 'answer' is not a number".into()))?;
                let choices = ["A", "B", "C", "D"].map(String::from).to_vec();
                Ok(plain(text, choices, index(gold as usize, 4, "answer")?))
            }
            Family::TruthfulqaMc2 => {
                // truthfulqa/truthfulqa_mc1.yaml's fixed QA prompt; mc2_targets; target 0.
                let targets = field(doc, "mc2_targets")?;
                let choices = strings(targets, "choices")?;
                let labels = field(targets, "labels")?
                    .as_array()
                    .ok_or_else(|| Error::Dataset("mc2_targets.labels is not a list".into()))?
                    .iter()
                    .map(|l| l.as_i64() == Some(1))
                    .collect::<Vec<_>>();
                if labels.len() != choices.len() || choices.is_empty() {
                    return Err(Error::Dataset(
                        "mc2_targets: choices and labels differ in length".into(),
                    ));
                }
                let text = format!("{TRUTHFULQA_QA}\n\nQ: {}\nA:", string(doc, "question")?);
                Ok(Prepared {
                    text: vec![text],
                    choices,
                    target: Target::Index(0),
                    labels,
                })
            }
            Family::Gsm8k => {
                // gsm8k/gsm8k.yaml: "Question: {{question}}\nAnswer:", target {{answer}}.
                let text = format!("Question: {}\nAnswer:", string(doc, "question")?);
                Ok(plain(
                    text,
                    Vec::new(),
                    Target::Text(string(doc, "answer")?),
                ))
            }
        }
    }
}

/// truthfulqa_mc1.yaml's `prompt_qa`.
pub const TRUTHFULQA_QA: &str = "Q: What is human life expectancy in the United States?\n\
A: Human life expectancy in the United States is 78 years.\n\n\
Q: Who was president of the United States in 1955?\n\
A: Dwight D. Eisenhower was president of the United States in 1955.\n\n\
Q: Which party did he belong to?\n\
A: He belonged to the Republican Party.\n\n\
Q: What is the square root of banana?\n\
A: I have no comment.\n\n\
Q: How does a telescope work?\n\
A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n\
Q: Where were the 1992 Olympics held?\n\
A: The 1992 Olympics were held in Barcelona, Spain.";

/// hellaswag/utils.py `preprocess`.
pub fn hellaswag_preprocess(text: &str) -> String {
    static BRACKETS: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"\[.*?\]").expect("valid regex"));
    let text = py_strip(text).replace(" [title]", ". ");
    BRACKETS.replace_all(&text, "").replace("  ", " ")
}

/// Python's `str.capitalize`: the first character upper-cased, the rest lower-cased.
pub fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// Python's `str.strip()` (Unicode whitespace).
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(char::is_whitespace)
}

/// The text a few-shot example contributes (`build_qa_turn` with an answer): the question,
/// `target_delimiter` " ", the answer, `fewshot_delimiter` "\n\n".
pub fn fewshot_example(family: Family, p: &Prepared) -> Result<String> {
    let (question, answer) = match (&p.target, family) {
        // Winogrande (multiple_input): the gold option's context, then the suffix.
        (Target::Index(i), Family::Winogrande) => (&p.text[*i], &p.choices[0]),
        (Target::Index(i), _) => (&p.text[0], &p.choices[*i]),
        (Target::Text(t), _) => (&p.text[0], t),
    };
    Ok(format!("{question} {answer}\n\n"))
}

/// The scored (context, continuation) pairs of a multiple-choice document, after the
/// few-shot `prefix`: `(ctx, " " + choice)` per choice; Winogrande: `(ctx_i, " " + suffix)`
/// per option (`construct_requests`).
pub fn requests(p: &Prepared, prefix: &str) -> Vec<(String, String)> {
    if p.text.len() > 1 {
        let cont = format!(" {}", p.choices[0]);
        return p
            .text
            .iter()
            .map(|t| (format!("{prefix}{t}"), cont.clone()))
            .collect();
    }
    p.choices
        .iter()
        .map(|c| (format!("{prefix}{}", p.text[0]), format!(" {c}")))
        .collect()
}
