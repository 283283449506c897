#!/usr/bin/env Rscript
# Reference values for tests/gates/test_mannwhitney.py: R's own wilcox.test(x = green, y = blue,
# conf.int = TRUE, ...) on fixed-seed latency samples.
#
# Regenerate (from the repository root; needs only base R, no packages):
#   Rscript tests/data/r_wilcox/make_reference.R > tests/data/r_wilcox/reference.json
# Made with R 4.2.2 Patched (2022-11-10 r83330), Debian r-base-core, x86_64.
#
# JSON is written by hand (jsonlite is not installed): every double with %.17g so that it
# reads back bit for bit; infinite CI bounds as the strings "Inf" / "-Inf".

set.seed(20240517L)  # Mersenne-Twister, Inversion, Rejection (R >= 3.6 defaults)

num <- function(v) {
  if (is.infinite(v)) return(if (v > 0) '"Inf"' else '"-Inf"')
  if (is.na(v)) return("null")
  sprintf("%.17g", v)
}
vec <- function(v) paste0("[", paste(vapply(v, num, ""), collapse = ", "), "]")
str <- function(s) paste0('"', gsub('"', '\\\\"', s), '"')

lat <- function(n, median = 1.2, sdlog = 0.25, shift = 0) {
  # Stable Diffusion request latencies in seconds: lognormal around ~1 s plus a shift.
  rlnorm(n, meanlog = log(median), sdlog = sdlog) + shift
}
ms <- function(v) round(v, 3)  # millisecond resolution: creates ties in large samples

cases <- list()
add <- function(name, green, blue, alternative = "two.sided", conf.level = 0.95,
                exact = NULL, correct = TRUE) {
  cases[[length(cases) + 1L]] <<- list(name = name, green = green, blue = blue,
    alternative = alternative, conf.level = conf.level, exact = exact, correct = correct)
}

# --- small, no ties: exact distribution and exact CI
add("exact_5v6_null", lat(5), lat(6))
add("exact_8v8_shift_up", lat(8, shift = 0.3), lat(8))
add("exact_10v12_shift_down", lat(10, shift = -0.2), lat(12))
add("exact_1v1_not_achievable", lat(1), lat(1))
add("exact_2v3_not_achievable", lat(2), lat(3))
add("exact_3v4_conf98", lat(3), lat(4), conf.level = 0.98)
add("exact_20v25", lat(20, shift = 0.1), lat(25))
add("exact_49v49_max_exact", lat(49, shift = 0.05), lat(49))
add("exact_30v45_conf98", lat(30, shift = 0.15), lat(45), conf.level = 0.98)
add("exact_15v15_separated", lat(15, median = 3), lat(15, median = 1, sdlog = 0.1))
add("exact_12v9_greater", lat(12, shift = 0.2), lat(9), alternative = "greater")
add("exact_12v9_less", lat(12, shift = 0.2), lat(9), alternative = "less")
add("exact_7v11_less_conf98", lat(7), lat(11, shift = 0.4), alternative = "less",
    conf.level = 0.98)
add("exact_6v4_greater_conf98", lat(6, shift = 0.5), lat(4), alternative = "greater",
    conf.level = 0.98)
add("exact_40v10_unbalanced", lat(40), lat(10, shift = 0.1))

# --- small, no ties, normal approximation forced
add("forced_normal_10v10", lat(10, shift = 0.2), lat(10), exact = FALSE)
add("forced_normal_nocorrect_14v9", lat(14), lat(9, shift = 0.3), exact = FALSE,
    correct = FALSE)

# --- small with ties: R falls back to the normal approximation
add("ties_10v12_rounded", round(lat(10, shift = 0.2), 1), round(lat(12), 1))
add("ties_integers_8v9", as.double(sample(1:5, 8, TRUE)), as.double(sample(2:6, 9, TRUE)))
add("ties_two_values", c(1, 1, 2), c(1, 2, 2, 2))
add("ties_green_constant", c(2, 2, 2), c(1.5, 2, 2.5, 3, 2))
add("ties_exact_requested", round(lat(9), 1), round(lat(9, shift = 0.3), 1), exact = TRUE)
add("ties_49v49", round(lat(49, shift = 0.1), 2), round(lat(49), 2))
add("ties_greater_conf98", round(lat(15, shift = 0.3), 1), round(lat(18), 1),
    alternative = "greater", conf.level = 0.98)

# --- identical-ish samples
b <- lat(30)
add("identical_multiset_permuted", rev(b), b)
b2 <- b; b2[7] <- b2[7] + 0.05
add("identical_but_one", b2, b)
b3 <- ms(lat(120))
add("identical_multiset_large", sample(b3), b3)

# --- large samples, lognormal latencies, normal approximation
add("large_60v60_null", lat(60), lat(60))
add("large_100v100_up5pct", lat(100, median = 1.26), lat(100))
add("large_150v150_up20pct_ms", ms(lat(150, median = 1.44)), ms(lat(150)))
add("large_200v200_down10pct", lat(200, median = 1.08), lat(200))
add("large_300v300_null_ms", ms(lat(300)), ms(lat(300)))
add("large_300v250_up3pct_conf98", lat(300, median = 1.236), lat(250), conf.level = 0.98)
add("large_80v120_tail_only", c(lat(70), lat(10, median = 4)), lat(120))
add("large_100v100_greater", ms(lat(100, shift = 0.05)), ms(lat(100)),
    alternative = "greater")
add("large_100v100_less_conf98", lat(100, shift = 0.05), lat(100), alternative = "less",
    conf.level = 0.98)
add("large_60v70_separated", lat(60, median = 3), lat(70, median = 1, sdlog = 0.1))
add("mixed_20v80", lat(20, shift = 0.1), lat(80))
add("endpoint_1v59", 1, as.double(2:60))          # R's own example: CI at the endpoints
add("endpoint_2v60_greater", c(0.5, 0.6), lat(60), alternative = "greater")
add("large_conf80", lat(90, shift = 0.02), lat(90), conf.level = 0.80)

cat('{\n  "r_version": ', str(R.version.string), ',\n  "cases": [\n', sep = "")
for (i in seq_along(cases)) {
  k <- cases[[i]]
  warn <- character()
  res <- withCallingHandlers(
    wilcox.test(k$green, k$blue, alternative = k$alternative, conf.int = TRUE,
                conf.level = k$conf.level, exact = k$exact, correct = k$correct),
    warning = function(w) {
      warn <<- c(warn, conditionMessage(w))
      invokeRestart("muffleWarning")
    })
  cat('    {"name": ', str(k$name),
      ', "alternative": ', str(sub(".", "-", k$alternative, fixed = TRUE)),
      ', "conf_level": ', num(k$conf.level),
      ', "exact": ', if (is.null(k$exact)) "null" else tolower(k$exact),
      ', "correct": ', tolower(k$correct), ",\n",
      '     "green": ', vec(k$green), ",\n",
      '     "blue": ', vec(k$blue), ",\n",
      '     "r": {"statistic": ', num(unname(res$statistic)),
      ', "p_value": ', num(res$p.value),
      ', "estimate": ', num(unname(res$estimate)),
      ', "conf_int": ', vec(as.vector(res$conf.int)),
      ', "conf_level": ', num(attr(res$conf.int, "conf.level")),
      ', "method": ', str(res$method),
      ', "warnings": [', paste(vapply(warn, str, ""), collapse = ", "), "]}}",
      if (i < length(cases)) "," else "", "\n", sep = "")
}
cat("  ]\n}\n")
