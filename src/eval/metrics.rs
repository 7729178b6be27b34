//! Per-document metrics and their aggregation as lm_eval computes them
//! (`lm_eval/api/task.py` `process_results`, `lm_eval/api/metrics.py`).

/// `np.argmax`: the first index of the largest value.
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// `acc` and `acc_norm` of a multiple-choice document: the argmax of the log-likelihoods,
/// and of the log-likelihoods divided by each choice's length in characters (`len(choice)`
/// in Python, the choice without the target delimiter).
pub fn acc_and_norm(lls: &[f64], choices: &[String], gold: usize) -> (f64, f64) {
    let norm: Vec<f64> = lls
        .iter()
        .zip(choices)
        .map(|(ll, c)| ll / c.chars().count() as f64)
        .collect();
    let hit = |i: usize| if i == gold { 1.0 } else { 0.0 };
    (hit(argmax(lls)), hit(argmax(&norm)))
}

/// truthfulqa/utils.py `process_results_mc2`: the probability mass of the true answers,
/// normalized over all answers.
pub fn mc2(lls: &[f64], labels: &[bool]) -> f64 {
    let probs: Vec<f64> = lls.iter().map(|l| l.exp()).collect();
    let total: f64 = probs.iter().sum();
    probs
        .iter()
        .zip(labels)
        .filter(|(_, &t)| t)
        .map(|(p, _)| p / total)
        .sum()
}

/// `mean`.
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// `mean_stderr`: sample standard deviation / sqrt(n); `None` below two samples (lm_eval
/// prints N/A).
pub fn mean_stderr(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    let mu = mean(xs);
    let var = xs.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1) as f64;
    Some(var.sqrt() / (n as f64).sqrt())
}

/// `pooled_sample_stderr`: a group's stderr from its subtasks' (stderr, size).
pub fn pooled_stderr(parts: &[(f64, usize)]) -> Option<f64> {
    let total: usize = parts.iter().map(|p| p.1).sum();
    if total <= parts.len() {
        return None;
    }
    let var = parts
        .iter()
        .map(|&(se, n)| (n as f64 - 1.0) * se * se * n as f64)
        .sum::<f64>()
        / (total - parts.len()) as f64;
    Some((var / total as f64).sqrt())
}

/// GSM8K's filters (gsm8k/gsm8k.yaml `filter_list`, `lm_eval/filters/extraction.py`
/// `RegexFilter`): the first (strict) or last (flexible) match, its first non-empty group,
/// stripped; `[invalid]` when nothing matches.
pub fn regex_extract(re: &regex::Regex, text: &str, last: bool) -> String {
    let caps: Vec<regex::Captures> = re.captures_iter(text).collect();
    let pick = if last { caps.last() } else { caps.first() };
    let Some(c) = pick else {
        return "[invalid]".into();
    };
    let groups: Vec<&str> = (1..c.len())
        .map(|i| c.get(i).map_or("", |m| m.as_str()))
        .collect();
    let found = match groups.len() {
        0 => c.get(0).map_or("", |m| m.as_str()),
        1 => groups[0],
        _ => match groups.into_iter().find(|g| !g.is_empty()) {
            Some(g) => g,
            None => return "[invalid]".into(),
        },
    };
    found.trim().to_string()
}

/// GSM8K's `exact_match` (`exact_match_hf_evaluate` with the yaml's `regexes_to_ignore`,
/// `ignore_case`): both sides cleaned the same way, then compared.
pub fn gsm8k_exact_match(prediction: &str, reference: &str) -> f64 {
    static IGNORE: std::sync::LazyLock<Vec<regex::Regex>> = std::sync::LazyLock::new(|| {
        [",", r"\$", r"(?s).*#### ", r"\.$"]
            .iter()
            .map(|p| regex::Regex::new(p).expect("valid regex"))
            .collect()
    });
    let clean = |s: &str| {
        let mut s = s.to_string();
        for re in IGNORE.iter() {
            s = re.replace_all(&s, "").into_owned();
        }
        s.to_lowercase()
    };
    if clean(prediction) == clean(reference) {
        1.0
    } else {
        0.0
    }
}

/// The strict-match pattern.
pub const GSM8K_STRICT: &str = r"#### (\-?[0-9\.\,]+)";
/// The flexible-extract pattern (the last match).
pub const GSM8K_FLEXIBLE: &str = r"(-?[$0-9.,]{2,})|(-?[0-9]+)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm8k_filters_and_match() {
        let strict = regex::Regex::new(GSM8K_STRICT).unwrap();
        let flex = regex::Regex::new(GSM8K_FLEXIBLE).unwrap();
        let out = " She pays 3 * $2 = $6.\nThen 6 + 1,000 = 1,006.\n#### 1,006";
        assert_eq!(regex_extract(&strict, out, false), "1,006");
        assert_eq!(regex_extract(&flex, out, true), "1,006");
        assert_eq!(regex_extract(&strict, "no answer", false), "[invalid]");
        assert_eq!(regex_extract(&flex, "it is 7 apples", true), "7");
        assert_eq!(
            gsm8k_exact_match("1,006", "3 + 1003 = 1006\n#### 1006"),
            1.0
        );
        assert_eq!(gsm8k_exact_match("$18.", "#### 18"), 1.0);
        assert_eq!(gsm8k_exact_match("[invalid]", "#### 18"), 0.0);
    }

    #[test]
    fn acc_norm_divides_by_characters() {
        // Choice 1 has the lower total but the higher per-character log-likelihood.
        let choices = ["ab".to_string(), "abcdefgh".to_string()];
        assert_eq!(acc_and_norm(&[-2.0, -4.0], &choices, 1), (0.0, 1.0));
        // Ties go to the first, like np.argmax.
        assert_eq!(argmax(&[-1.0, -1.0]), 0);
    }

    #[test]
    fn stderr_like_lm_eval() {
        // statistics.stdev([1,0,1,1]) / 2 = 0.25
        assert!((mean_stderr(&[1.0, 0.0, 1.0, 1.0]).unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(mean_stderr(&[1.0]), None);
        let p = pooled_stderr(&[(0.25, 4), (0.25, 4)]).unwrap();
        // sqrt(((3*0.0625*4)*2/6)/8)
        assert!((p - (0.25f64 / 8.0).sqrt()).abs() < 1e-12);
        assert!(
            (mc2(
                &[0f64.ln(), 0.5f64.ln(), 0.5f64.ln()].map(|x| x.max(-1e9)),
                &[true, true, false]
            ) - 0.5)
                .abs()
                < 1e-9
        );
    }
}
