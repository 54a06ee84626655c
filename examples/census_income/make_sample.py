"""Writes a small generated sample in the UCI census-income (KDD) file layout, so the example runs
offline: 42 comma-separated columns without a header, "?" for unknown, income label
"- 50000." / "50000+." in the last column, and the instance weight in column 25.

The values are drawn from a simple generative model (not from the real survey), with income and
marital status both depending on age, education and weeks worked, so the two tasks are related.

    python examples/census_income/make_sample.py            # writes sample/census-income.{data,test}
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mtl_torchrec.core.io import atomic_write_text
from mtl_torchrec.launch.args import doc_summary

# The 42 columns of the census-income (KDD) layout, in file order.
COLUMNS = [
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode", "education",
    "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat", "major_industry_code",
    "major_occupation_code", "race", "hispanic_origin", "sex", "member_of_a_labor_union",
    "reason_for_unemployment", "full_or_part_time_employment_stat", "capital_gains", "capital_losses",
    "dividends_from_stocks", "tax_filer_stat", "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household", "instance_weight",
    "migration_code_change_in_msa", "migration_code_change_in_reg", "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago", "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self",
    "citizenship", "own_business_or_self_employed", "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits", "weeks_worked_in_year", "year", "income",
]

EDUCATION = ["Children", "High school graduate", "Some college but no degree", "Bachelors degree(BA AB BS)",
             "Masters degree(MA MS MEng MEd MSW MBA)", "Doctorate degree(PhD EdD)", "10th grade"]
WORKER = ["Not in universe", "Private", "Self-employed-not incorporated", "Local government", "Federal government"]
MARITAL = ["Never married", "Married-civilian spouse present", "Divorced", "Widowed", "Separated"]
INDUSTRY = ["Not in universe or children", "Retail trade", "Manufacturing-durable goods", "Education",
            "Finance insurance and real estate", "Construction", "Hospital services"]
OCCUPATION = ["Not in universe", "Adm support including clerical", "Professional specialty", "Sales",
              "Executive admin and managerial", "Precision production craft & repair"]
RACE = ["White", "Black", "Asian or Pacific Islander", "Amer Indian Aleut or Eskimo", "Other"]
STATES = ["Not in universe", "California", "Utah", "Florida", "North Carolina", "?"]
COUNTRY = ["United-States", "Mexico", "?", "Philippines", "Germany", "India"]


def generate(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    age = rng.integers(0, 91, n)
    edu = np.where(age < 16, 0, rng.choice(np.arange(1, len(EDUCATION)), n, p=[0.35, 0.25, 0.2, 0.1, 0.03, 0.07]))
    weeks = np.where(age < 16, 0, rng.choice([0, 26, 40, 52], n, p=[0.3, 0.1, 0.1, 0.5]))
    edu_score = np.array([0, 1, 1.5, 2.5, 3.2, 3.8, 0.5])[edu]
    z_income = -6.0 + 0.9 * edu_score + 0.04 * weeks + 0.03 * np.minimum(age, 55) + rng.normal(0, 0.7, n)
    income = rng.random(n) < 1 / (1 + np.exp(-z_income))
    z_single = 2.5 - 0.12 * np.maximum(age - 18, 0) + 0.2 * edu_score - 0.01 * weeks + rng.normal(0, 0.5, n)
    single = (age < 16) | (rng.random(n) < 1 / (1 + np.exp(-z_single)))
    marital = np.where(single, 0, rng.choice(np.arange(1, len(MARITAL)), n, p=[0.7, 0.15, 0.1, 0.05]))
    gains = np.where(income & (rng.random(n) < 0.3), rng.integers(1000, 20000, n), 0)
    rows = []
    for i in range(n):
        adult = age[i] >= 16
        cells = {c: "Not in universe" for c in COLUMNS}
        cells.update({
            "age": str(age[i]),
            "class_of_worker": WORKER[rng.integers(1, len(WORKER))] if adult and weeks[i] else WORKER[0],
            "detailed_industry_recode": str(rng.integers(0, 52)),
            "detailed_occupation_recode": str(rng.integers(0, 47)),
            "education": EDUCATION[edu[i]],
            "wage_per_hour": str(int(rng.integers(0, 2000)) if weeks[i] and rng.random() < 0.2 else 0),
            "marital_stat": MARITAL[marital[i]],
            "major_industry_code": INDUSTRY[rng.integers(0, len(INDUSTRY))] if adult else INDUSTRY[0],
            "major_occupation_code": OCCUPATION[rng.integers(0, len(OCCUPATION))] if adult else OCCUPATION[0],
            "race": RACE[rng.choice(len(RACE), p=[0.8, 0.1, 0.05, 0.02, 0.03])],
            "hispanic_origin": "All other",
            "sex": "Female" if rng.random() < 0.52 else "Male",
            "capital_gains": str(gains[i]),
            "capital_losses": "0",
            "dividends_from_stocks": str(int(rng.integers(0, 5000)) if income[i] and rng.random() < 0.4 else 0),
            "tax_filer_stat": "Nonfiler" if not adult else "Joint both under 65",
            "state_of_previous_residence": STATES[rng.integers(0, len(STATES))],
            "instance_weight": f"{rng.uniform(500, 3000):.2f}",
            "migration_code_change_in_msa": "?" if rng.random() < 0.5 else "Nonmover",
            "num_persons_worked_for_employer": str(rng.integers(0, 7) if weeks[i] else 0),
            "family_members_under_18": "Both parents present" if not adult else "Not in universe",
            "country_of_birth_father": COUNTRY[rng.integers(0, len(COUNTRY))],
            "country_of_birth_mother": COUNTRY[rng.integers(0, len(COUNTRY))],
            "country_of_birth_self": COUNTRY[rng.choice(len(COUNTRY), p=[0.85, 0.05, 0.02, 0.03, 0.02, 0.03])],
            "citizenship": "Native- Born in the United States",
            "own_business_or_self_employed": str(rng.integers(0, 3)),
            "veterans_benefits": str(rng.integers(0, 3)),
            "weeks_worked_in_year": str(weeks[i]),
            "year": str(rng.choice([94, 95])),
            "income": "50000+." if income[i] else "- 50000.",
        })
        rows.append(", ".join(cells[c] for c in COLUMNS))
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=doc_summary(__doc__))
    ap.add_argument("--out", default=str(Path(__file__).parent / "sample"))
    ap.add_argument("--train-rows", type=int, default=1200)
    ap.add_argument("--test-rows", type=int, default=400)
    args = ap.parse_args()
    out = Path(args.out)
    atomic_write_text(out / "census-income.data", generate(args.train_rows, seed=1))
    atomic_write_text(out / "census-income.test", generate(args.test_rows, seed=2))
    print(f"wrote {out}/census-income.data ({args.train_rows} rows) and census-income.test ({args.test_rows} rows)")


if __name__ == "__main__":
    main()
