#!/usr/bin/env python3
"""Generate the bundled synthetic domain datasets, schemas, configs and tiny-base corpus.

Run from the repository root::

    python scripts/generate_domain_data.py [--out-dir DIR]

It writes, under ``DIR`` (default: the repository root)::

    configs/domains/<name>.yaml            domain config
    configs/domains/<name>/data.jsonl      360 records + 3 exact duplicates
    configs/domains/<name>/schema.json     JSON Schema (draft 2020-12) of the answer
    configs/domains/brand_captions/brands.json   the context file of the sixth domain: 12 brands
    src/lorafleet/tiny_base/corpus.txt     3000 pretraining documents (other seeds), shipped in the package

The sixth domain, brand_captions (Thai marketing captions in a brand's voice, with the brand's hashtags), is asked with
its brand's record from brands.json in the prompt (the domain config's ``context`` section); it adds nothing to the
tiny base's corpus, which stays as the first five domains made it.

Stdlib only and fully deterministic: every random choice comes from a seeded
``random.Random``; re-running produces byte-identical files.
"""
from __future__ import annotations

import argparse
import json
import random
import textwrap
from pathlib import Path

N_RECORDS = 360
N_DUPLICATES = 3
CORPUS_DOCS = 3000
CORPUS_MAX_BYTES = 1_500_000
DOMAIN_ORDER = ["contracts", "medical", "financial", "legal", "story_summary"]
DATA_SEEDS = {"contracts": 1101, "medical": 1202, "financial": 1303, "legal": 1404, "story_summary": 1505}
CORPUS_SEEDS = {"contracts": 9101, "medical": 9202, "financial": 9303, "legal": 9404, "story_summary": 9505}
CORPUS_SHUFFLE_SEED = 9999
DUPLICATE_SEED_OFFSET = 77

EN_INPUT_RANGE = (150, 400)
EN_ANSWER_MAX = 250
STORY_INPUT_RANGE = (150, 550)
STORY_ANSWER_MAX = 350

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


# --------------------------------------------------------------------------- helpers


def join_list(items: list[str]) -> str:
    """["a"] -> "a"; ["a", "b"] -> "a and b"; ["a", "b", "c"] -> "a, b and c"."""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def cap(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:] if sentence else sentence


def dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


def fit(build, input_range: tuple[int, int], answer_max: int, tries: int = 500):
    """Call build() until the (input, answer) pair fits the length limits (deterministic)."""
    lo, hi = input_range
    for _ in range(tries):
        text, answer = build()
        if lo <= len(text) <= hi and len(dumps(answer)) <= answer_max:
            return text, answer
    raise RuntimeError(f"could not fit an example into the length limits: {text!r}")


# --------------------------------------------------------------------------- shared pools

NAME_PREFIXES = [
    "Northwind", "Helios", "Aurora", "Bluestone", "Cedar", "Crescent", "Evergreen", "Falcon",
    "Granite", "Harbor", "Ironwood", "Juniper", "Keystone", "Lumen", "Meridian", "Nimbus",
    "Orion", "Pinnacle", "Quartz", "Redwood", "Sapphire", "Summit", "Tidewater", "Vertex",
    "Willow", "Zephyr", "Atlas", "Beacon", "Cobalt", "Ember", "Highland", "Lotus", "Mekong",
    "Sakura", "Rhine", "Thames", "Alpine", "Coral", "Silverline", "Brightwater", "Oakridge",
    "Starling", "Kestrel", "Marigold", "Bayview", "Copperleaf", "Halcyon", "Saigon River",
]
INDUSTRIES = [
    "Logistics", "Biotech", "Software", "Energy", "Foods", "Textiles", "Robotics", "Capital",
    "Pharma", "Telecom", "Shipping", "Analytics", "Materials", "Motors", "Retail",
    "Semiconductor", "Hospitality", "Media", "Agritech", "Construction", "Aerospace", "Payments",
]


def company_name(rng: random.Random, suffixes: list[str]) -> str:
    return f"{rng.choice(NAME_PREFIXES)} {rng.choice(INDUSTRIES)} {rng.choice(suffixes)}"


# --------------------------------------------------------------------------- contracts

CLAUSE_TYPES = ["payment", "termination", "confidentiality", "indemnification", "governing_law", "term"]
CONTRACT_CURRENCIES = ["USD", "EUR", "GBP", "JPY", "VND"]
CONTRACT_SUFFIXES = ["LLC", "Ltd.", "Inc.", "GmbH", "Pte. Ltd.", "S.A.", "Co., Ltd.", "plc", "B.V.", "JSC"]
AGREEMENTS = [
    "Master Services Agreement", "Supply Agreement", "Software License Agreement",
    "Distribution Agreement", "Consulting Agreement", "Lease Agreement", "Joint Venture Agreement",
    "Manufacturing Agreement", "Maintenance Agreement", "Marketing Services Agreement",
    "Data Processing Agreement", "Reseller Agreement",
]
GOVERNING_LAWS = {
    "New York": "the State of New York",
    "Delaware": "the State of Delaware",
    "California": "the State of California",
    "Texas": "the State of Texas",
    "England and Wales": "England and Wales",
    "Scotland": "Scotland",
    "Singapore": "Singapore",
    "Hong Kong": "Hong Kong",
    "Vietnam": "Vietnam",
    "Japan": "Japan",
    "Germany": "Germany",
    "France": "France",
    "Ontario": "the Province of Ontario",
    "New South Wales": "New South Wales",
    "Switzerland": "Switzerland",
    "Ireland": "Ireland",
}
TERM_MONTHS = [3, 6, 9, 12, 18, 24, 30, 36, 48, 60, 72, 84, 120]

CONTRACT_TEMPLATES = {
    "payment": [
        "Payment. Under the {ag} between {a} and {b}, {a} shall pay {b} a total fee of {amt} in equal "
        "monthly installments over {t} months. This clause is governed by the laws of {law}.",
        "{a} will remit {amt} to {b} within {days} days of each invoice under this {ag}, which runs for "
        "{t} months. Any payment dispute is governed by the laws of {law}.",
        "Fees: in consideration of the services, {a} agrees to pay {b} {amt}, payable quarterly during "
        "the {t}-month term of this {ag}. The laws of {law} apply.",
    ],
    "termination": [
        "Termination. Either {a} or {b} may terminate this {ag} on {days} days' written notice after "
        "the first {t} months; the terminating party shall pay a break fee of {amt}. Governing law: {law}.",
        "If {a} or {b} materially breaches this {ag} and fails to cure within {days} days, the other party "
        "may end it before its {t}-month term expires and recover {amt}. The laws of {law} govern this clause.",
    ],
    "confidentiality": [
        "Confidentiality. {a} and {b} shall each keep the other party's Confidential Information secret "
        "during the {t}-month term of this {ag}. Any breach carries liquidated damages of {amt}. "
        "The laws of {law} apply.",
        "Each of {a} and {b} agrees not to disclose proprietary information received under this {ag} "
        "for {t} months after signing, failing which the breaching party owes {amt}. This obligation "
        "is governed by the laws of {law}.",
    ],
    "indemnification": [
        "Indemnification. {a} shall be indemnified by {b} against all third-party claims arising from "
        "this {ag}, up to an aggregate cap of {amt} during the {t}-month term. This clause is governed "
        "by the laws of {law}.",
        "Under this {ag}, {a} and {b} will each indemnify the other for losses caused by its own "
        "negligence, capped at {amt} per claim for {t} months. The laws of {law} govern this indemnity.",
    ],
    "governing_law": [
        "Governing Law. This {ag} between {a} and {b}, with a total value of {amt} and a term of {t} "
        "months, shall be governed by and construed in accordance with the laws of {law}.",
        "{a} and {b} agree that all disputes under this {ag} (contract value {amt}, term {t} months) "
        "are governed by the laws of {law} and submit to the exclusive jurisdiction of its courts.",
    ],
    "term": [
        "Term. This {ag} between {a} and {b} takes effect on the Effective Date and continues for {t} "
        "months, with an annual fee of {amt} payable to {b}. It is governed by the laws of {law}.",
        "The initial term of the {ag} entered into by {a} and {b} is {t} months and renews automatically "
        "unless either party objects; the contract value is {amt}. The laws of {law} apply.",
    ],
}


def contract_amount(rng: random.Random, currency: str) -> int:
    if currency == "JPY":
        return rng.randint(2, 800) * 500_000
    if currency == "VND":
        return rng.randint(1, 4000) * 25_000_000
    return rng.randint(2, 2000) * 2_500


def format_money(rng: random.Random, currency: str, amount: int) -> str:
    number = f"{amount:,}"
    return f"{number} {currency}" if rng.random() < 0.2 else f"{currency} {number}"


def contracts_group(rng: random.Random, size: int):
    a = company_name(rng, CONTRACT_SUFFIXES)
    b = company_name(rng, CONTRACT_SUFFIXES)
    while b.split()[0] == a.split()[0]:
        b = company_name(rng, CONTRACT_SUFFIXES)
    agreement = rng.choice(AGREEMENTS)
    currency = rng.choice(CONTRACT_CURRENCIES)
    term = rng.choice(TERM_MONTHS)
    law = rng.choice(sorted(GOVERNING_LAWS))
    examples = []
    for clause_type in rng.sample(CLAUSE_TYPES, size):
        def build(clause_type=clause_type):
            amount = contract_amount(rng, currency)
            text = rng.choice(CONTRACT_TEMPLATES[clause_type]).format(
                a=a, b=b, ag=agreement, amt=format_money(rng, currency, amount), t=term,
                law=GOVERNING_LAWS[law], days=rng.choice([15, 30, 45, 60, 90]))
            answer = {"clause_type": clause_type, "parties": [a, b], "amount": amount,
                      "currency": currency, "term_months": term, "governing_law": law}
            return text, answer
        examples.append(fit(build, EN_INPUT_RANGE, EN_ANSWER_MAX))
    return examples


CONTRACTS_SCHEMA = {
    "$schema": SCHEMA_URI,
    "title": "Contract clause terms",
    "type": "object",
    "additionalProperties": False,
    "required": ["clause_type", "parties", "amount", "currency", "term_months", "governing_law"],
    "properties": {
        "clause_type": {"type": "string", "enum": CLAUSE_TYPES},
        "parties": {"type": "array", "items": {"type": "string", "minLength": 1},
                    "minItems": 2, "maxItems": 2},
        "amount": {"type": "number", "minimum": 0},
        "currency": {"type": "string", "enum": CONTRACT_CURRENCIES},
        "term_months": {"type": "integer", "minimum": 1},
        "governing_law": {"type": "string", "minLength": 1},
    },
}


# --------------------------------------------------------------------------- medical

DIAGNOSES = [
    ("type 2 diabetes mellitus", ["increased thirst and frequent urination", "fatigue and blurred vision"],
     [("metformin", ["500 mg", "1000 mg"]), ("empagliflozin", ["10 mg", "25 mg"]), ("sitagliptin", ["100 mg"])]),
    ("essential hypertension", ["morning headaches", "elevated home blood pressure readings"],
     [("lisinopril", ["10 mg", "20 mg"]), ("amlodipine", ["5 mg", "10 mg"]), ("hydrochlorothiazide", ["12.5 mg", "25 mg"]),
      ("losartan", ["50 mg"])]),
    ("community-acquired pneumonia", ["fever and productive cough for 4 days", "shortness of breath and chills"],
     [("amoxicillin", ["1000 mg"]), ("azithromycin", ["500 mg", "250 mg"]), ("doxycycline", ["100 mg"])]),
    ("major depressive disorder", ["low mood and poor sleep for 2 months", "loss of interest and low energy"],
     [("sertraline", ["50 mg", "100 mg"]), ("escitalopram", ["10 mg"]), ("fluoxetine", ["20 mg"])]),
    ("persistent asthma", ["wheezing at night", "cough and chest tightness with exercise"],
     [("albuterol", ["90 mcg"]), ("budesonide", ["180 mcg"]), ("montelukast", ["10 mg"])]),
    ("hyperlipidemia", ["abnormal cholesterol on screening labs", "a family history of early heart disease"],
     [("atorvastatin", ["20 mg", "40 mg"]), ("rosuvastatin", ["10 mg"]), ("ezetimibe", ["10 mg"])]),
    ("urinary tract infection", ["burning on urination for 2 days", "urinary frequency and pelvic pain"],
     [("nitrofurantoin", ["100 mg"]), ("cephalexin", ["500 mg"]), ("phenazopyridine", ["200 mg"])]),
    ("migraine without aura", ["recurrent throbbing headaches", "headaches with nausea and light sensitivity"],
     [("sumatriptan", ["50 mg", "100 mg"]), ("propranolol", ["40 mg"]), ("topiramate", ["25 mg"])]),
    ("gastroesophageal reflux disease", ["heartburn after meals", "acid regurgitation at night"],
     [("omeprazole", ["20 mg", "40 mg"]), ("pantoprazole", ["40 mg"]), ("famotidine", ["20 mg"])]),
    ("hypothyroidism", ["weight gain and cold intolerance", "fatigue and dry skin"],
     [("levothyroxine", ["50 mcg", "75 mcg", "100 mcg"])]),
    ("atrial fibrillation", ["palpitations for 3 days", "an irregular pulse and dizziness"],
     [("apixaban", ["5 mg"]), ("metoprolol", ["25 mg", "50 mg"]), ("diltiazem", ["120 mg"])]),
    ("osteoarthritis of the knee", ["knee pain when climbing stairs", "morning knee stiffness"],
     [("acetaminophen", ["650 mg"]), ("naproxen", ["500 mg"]), ("meloxicam", ["15 mg"])]),
    ("generalized anxiety disorder", ["constant worry and restlessness", "trouble sleeping and muscle tension"],
     [("buspirone", ["10 mg"]), ("escitalopram", ["10 mg"]), ("hydroxyzine", ["25 mg"])]),
    ("iron deficiency anemia", ["fatigue and pale skin", "shortness of breath on exertion"],
     [("ferrous sulfate", ["325 mg"]), ("vitamin C", ["500 mg"])]),
    ("acute gout", ["a swollen, painful big toe", "sudden ankle pain overnight"],
     [("colchicine", ["0.6 mg"]), ("allopurinol", ["100 mg"]), ("prednisone", ["40 mg"])]),
    ("heart failure with reduced ejection fraction", ["leg swelling and breathlessness", "orthopnea"],
     [("furosemide", ["40 mg"]), ("carvedilol", ["6.25 mg"]), ("spironolactone", ["25 mg"])]),
    ("chronic obstructive pulmonary disease", ["chronic cough with sputum", "breathlessness when walking"],
     [("tiotropium", ["18 mcg"]), ("albuterol", ["90 mcg"]), ("prednisone", ["40 mg"])]),
    ("cellulitis of the left leg", ["a red, warm area on the left shin", "leg redness spreading for 2 days"],
     [("cephalexin", ["500 mg"]), ("clindamycin", ["300 mg"])]),
]
FREQUENCIES = ["once daily", "twice daily", "three times daily", "at bedtime", "every 8 hours", "as needed"]
FOLLOW_UP_DAYS = [3, 5, 7, 10, 14, 21, 28, 30, 42, 60, 90]
MEDICAL_TEMPLATES = [
    "{age}-year-old {sex} presents with {complaint}. Exam and labs reviewed. Assessment: {dx}. "
    "Plan: start {meds}. Follow up in {fu} days.",
    "Clinic note. Patient is a {age} y/o {sex} with {complaint}. Impression: {dx}. Prescribed {meds}. "
    "Return visit in {fu} days.",
    "CC: {complaint}. {age}-year-old {sex}, BP {bp}, HR {hr}. Diagnosis: {dx}. Rx: {meds}. "
    "Recheck in {fu} days.",
    "Seen today for {complaint}. Findings are consistent with {dx}. We will begin {meds}. "
    "The patient ({age}, {sex}) should come back in {fu} days.",
    "Follow-up visit for a {age}-year-old {sex} with {complaint}. Working diagnosis: {dx}. "
    "Current regimen: {meds}. Next appointment in {fu} days.",
    "Telehealth consult for a {age}-year-old {sex} reporting {complaint}. Clinical diagnosis: {dx}. "
    "Medications ordered: {meds}. Schedule follow-up in {fu} days.",
    "Discharge summary: {age}-year-old {sex} admitted with {complaint}. Final diagnosis: {dx}. "
    "Discharged on {meds}. Outpatient review in {fu} days.",
]


def medical_group(rng: random.Random, size: int):
    age = rng.randint(19, 89)
    sex = rng.choice(["male", "female"])
    examples = []
    for dx, complaints, drugs in rng.sample(DIAGNOSES, size):
        def build(dx=dx, complaints=complaints, drugs=drugs):
            chosen = rng.sample(drugs, rng.randint(1, min(3, len(drugs))))
            meds = [{"name": name, "dose": rng.choice(doses)} for name, doses in chosen]
            meds_text = join_list([f"{m['name']} {m['dose']} {rng.choice(FREQUENCIES)}" for m in meds])
            follow_up = rng.choice(FOLLOW_UP_DAYS)
            text = rng.choice(MEDICAL_TEMPLATES).format(
                age=age, sex=sex, complaint=rng.choice(complaints), dx=dx, meds=meds_text, fu=follow_up,
                bp=f"{rng.randint(105, 170)}/{rng.randint(60, 100)}", hr=rng.randint(55, 115))
            return text, {"diagnosis": dx, "medications": meds, "follow_up_days": follow_up}
        examples.append(fit(build, EN_INPUT_RANGE, EN_ANSWER_MAX))
    return examples


MEDICAL_SCHEMA = {
    "$schema": SCHEMA_URI,
    "title": "Clinical note extraction",
    "type": "object",
    "additionalProperties": False,
    "required": ["diagnosis", "medications", "follow_up_days"],
    "properties": {
        "diagnosis": {"type": "string", "minLength": 1},
        "medications": {
            "type": "array", "minItems": 1, "maxItems": 3,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "dose"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "dose": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)? (mg|mcg|g|mL|units)$"},
                },
            },
        },
        "follow_up_days": {"type": "integer", "minimum": 1},
    },
}


# --------------------------------------------------------------------------- financial

FIN_CURRENCIES = ["USD", "EUR", "GBP", "JPY"]
FIN_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}
FIN_SUFFIXES = ["Inc.", "Corp.", "plc", "AG", "SE", "Group", "Holdings", "N.V.", "K.K."]
ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth"}
UP_PHRASES = ["up {p}% year over year", "an increase of {p}% from a year earlier",
              "{p}% higher than a year ago", "growth of {p}% year on year"]
DOWN_PHRASES = ["down {p}% year over year", "a decrease of {p}% from a year earlier",
                "{p}% lower than a year ago", "a decline of {p}% year on year"]
UP_DRIVERS = ["strong subscription demand", "higher shipping volumes", "price increases", "new product launches",
              "a recovery in travel", "growth in emerging markets"]
DOWN_DRIVERS = ["weaker consumer demand", "lower commodity prices", "an inventory correction",
                "currency headwinds", "delayed customer orders", "a slowdown in construction"]
FIN_TEMPLATES = [
    "{company} reported revenue of {rev} for {qp}, {yoy}. Net income came in at {cur} {ni} million "
    "and operating margin was {margin}%.",
    "Earnings release, {qp}: {company} posted total revenue of {rev}, {yoy}. Management reiterated "
    "its full-year guidance.",
    "For {qp}, revenue at {company} reached {rev} ({yoy}), while diluted earnings per share were {sym}{eps}.",
    "{company} said {qp} sales totaled {rev}, {yoy}, driven by {driver}. The full quarterly report "
    "will be filed next month.",
    "Quarterly update from {company}: in {qp} the group generated {rev} in revenue, {yoy}; gross margin "
    "stood at {margin}%.",
    "Results for {qp} show {company} with revenue of {rev}, {yoy}. The board declared a dividend of "
    "{sym}{div} per share.",
    "Analysts noted that {company} booked {rev} of revenue in {qp}, {yoy}, as {driver} shaped the quarter.",
]


def quarter_phrase(rng: random.Random, q: int, year: int) -> str:
    return rng.choice([f"Q{q} {year}", f"Q{q} {year}", f"the {ORDINALS[q]} quarter of {year}",
                       f"fiscal Q{q} {year}", f"the {ORDINALS[q]} quarter of fiscal {year}"])


def revenue_phrase(rng: random.Random, currency: str, revenue: float) -> str:
    number = f"{revenue:,.1f}"
    return rng.choice([f"{currency} {number} million", f"{currency} {number} million",
                       f"{FIN_SYMBOLS[currency]}{number} million", f"{number} million {currency}"])


def financial_group(rng: random.Random, size: int):
    company = company_name(rng, FIN_SUFFIXES)
    currency = rng.choice(FIN_CURRENCIES)
    base_tenths = rng.randint(50_000, 20_000_000) if currency == "JPY" else rng.randint(200, 90_000)
    index = rng.randint(2021 * 4, 2025 * 4 - size + 3)  # consecutive quarters ending by Q4 2025
    examples = []
    for k in range(size):
        year, q = divmod(index + k, 4)
        q += 1

        def build(year=year, q=q):
            revenue_tenths = max(10, base_tenths + rng.randint(-base_tenths // 8, base_tenths // 8))
            revenue = revenue_tenths / 10
            pct_tenths = rng.randint(1, 400)
            up = rng.random() < 0.65
            pct = f"{pct_tenths / 10:.1f}"
            yoy = rng.choice(UP_PHRASES if up else DOWN_PHRASES).format(p=pct)
            text = rng.choice(FIN_TEMPLATES).format(
                company=company, qp=quarter_phrase(rng, q, year), rev=revenue_phrase(rng, currency, revenue),
                yoy=yoy, cur=currency, sym=FIN_SYMBOLS[currency],
                ni=f"{revenue_tenths * rng.randint(3, 20) / 1000:,.1f}", margin=f"{rng.randint(20, 450) / 10:.1f}",
                eps=f"{rng.randint(5, 900) / 100:.2f}", div=f"{rng.randint(5, 300) / 100:.2f}",
                driver=rng.choice(UP_DRIVERS if up else DOWN_DRIVERS))
            answer = {"company": company, "quarter": f"Q{q} {year}", "revenue": revenue, "currency": currency,
                      "yoy_change_pct": (pct_tenths if up else -pct_tenths) / 10}
            return cap(text), answer
        examples.append(fit(build, EN_INPUT_RANGE, EN_ANSWER_MAX))
    return examples


FINANCIAL_SCHEMA = {
    "$schema": SCHEMA_URI,
    "title": "Quarterly earnings figures",
    "type": "object",
    "additionalProperties": False,
    "required": ["company", "quarter", "revenue", "currency", "yoy_change_pct"],
    "properties": {
        "company": {"type": "string", "minLength": 1},
        "quarter": {"type": "string", "pattern": "^Q[1-4] [0-9]{4}$"},
        "revenue": {"type": "number", "minimum": 0},
        "currency": {"type": "string", "enum": FIN_CURRENCIES},
        "yoy_change_pct": {"type": "number"},
    },
}


# --------------------------------------------------------------------------- legal

OUTCOMES = ["granted", "denied", "dismissed", "affirmed", "reversed", "settled"]
FEDERAL_COURTS = [
    ("United States District Court for the Southern District of New York", "Second"),
    ("United States District Court for the Eastern District of New York", "Second"),
    ("United States District Court for the Northern District of California", "Ninth"),
    ("United States District Court for the Western District of Washington", "Ninth"),
    ("United States District Court for the District of Delaware", "Third"),
    ("United States District Court for the Northern District of Illinois", "Seventh"),
    ("United States District Court for the Eastern District of Texas", "Fifth"),
    ("United States District Court for the District of Massachusetts", "First"),
    ("United States District Court for the Southern District of Florida", "Eleventh"),
    ("United States District Court for the District of Colorado", "Tenth"),
    ("United States District Court for the Eastern District of Virginia", "Fourth"),
    ("United States District Court for the District of Minnesota", "Eighth"),
]
FEDERAL_STATUTES = [
    "42 U.S.C. § 1983", "42 U.S.C. § 2000e-2", "29 U.S.C. § 621", "15 U.S.C. § 1", "15 U.S.C. § 78j(b)",
    "17 U.S.C. § 501", "35 U.S.C. § 271", "18 U.S.C. § 1030", "29 U.S.C. § 207", "42 U.S.C. § 12112",
    "15 U.S.C. § 1125(a)", "29 U.S.C. § 1132", "47 U.S.C. § 227", "15 U.S.C. § 1681e",
]
STATE_COURTS = [
    ("Superior Court of California, County of Los Angeles", "California Court of Appeal, Second District",
     ["Cal. Civ. Code § 1714", "Cal. Lab. Code § 1102.5", "Cal. Bus. & Prof. Code § 17200",
      "Cal. Gov. Code § 12940"]),
    ("Supreme Court of the State of New York, New York County", "Appellate Division, First Department",
     ["N.Y. Gen. Bus. Law § 349", "N.Y. Lab. Law § 740", "N.Y. Exec. Law § 296"]),
    ("District Court of Harris County, Texas", "Texas Court of Appeals, Fourteenth District",
     ["Tex. Bus. & Com. Code § 17.46", "Tex. Lab. Code § 21.051", "Tex. Civ. Prac. & Rem. Code § 74.351"]),
    ("Circuit Court for Miami-Dade County, Florida", "Florida Third District Court of Appeal",
     ["Fla. Stat. § 501.204", "Fla. Stat. § 768.81", "Fla. Stat. § 448.102"]),
    ("Circuit Court of Cook County, Illinois", "Appellate Court of Illinois, First District",
     ["740 ILCS 14/15", "815 ILCS 505/2", "820 ILCS 130/2"]),
]
FIRST_NAMES = ["Maria", "James", "Aisha", "Daniel", "Mei", "Carlos", "Priya", "Thomas", "Elena", "Samuel",
               "Grace", "Omar", "Linh", "Victor", "Hannah", "Ravi", "Sofia", "Marcus", "Nadia", "Peter"]
LAST_NAMES = ["Alvarez", "Johnson", "Khan", "Nguyen", "Okafor", "Schmidt", "Rossi", "Patel", "Kim", "Murphy",
              "Cohen", "Tanaka", "Novak", "Dubois", "Garcia", "Walker", "Brennan", "Haddad", "Lindqvist", "Mendes"]
CITIES = ["Springfield", "Riverside", "Fairview", "Oakland", "Madison", "Georgetown", "Arlington", "Salem"]
DEFENDANT_SUFFIXES = ["Inc.", "Corp.", "LLC", "Co."]
TRIAL_PHRASES = {
    "granted": ["granted the defendant's motion for summary judgment",
                "granted the plaintiff's motion for a preliminary injunction",
                "granted the motion to compel arbitration"],
    "denied": ["denied the defendant's motion to dismiss", "denied class certification",
               "denied the motion for summary judgment"],
    "dismissed": ["dismissed the complaint with prejudice", "dismissed the action for lack of standing",
                  "dismissed the suit as time-barred"],
}
APPEAL_PHRASES = {
    "affirmed": ["affirmed the judgment", "affirmed the ruling below"],
    "reversed": ["reversed the judgment and remanded for further proceedings", "reversed the ruling below"],
}
TRIAL_TEMPLATES = [
    "In {case}, the {court} {op}. The complaint alleged violations of {stats}.",
    "{plaintiff} sued {defendant} under {stats}. After full briefing, the {court} {op}.",
    "Case summary: {case}. Forum: the {court}. Claims under {stats}. Result: the court {op}.",
    "The {court} {op} in {case}, a dispute arising under {stats}.",
    "Ruling in {case} ({year}): relying on {stats}, the {court} {op}.",
]
SETTLED_TEMPLATES = [
    "{plaintiff} brought claims against {defendant} under {stats} in the {court}. The parties settled "
    "before trial, and the court approved the settlement.",
    "In {case}, pending before the {court} on claims under {stats}, the parties reached a settlement "
    "and the case was closed in {year}.",
]
APPEAL_TEMPLATES = [
    "On appeal in {case}, the {court} {op}. The panel addressed claims under {stats}.",
    "The {court} {op} in {case}, construing {stats}.",
    "Appeal summary: {case}. Court: the {court}. Statutes at issue: {stats}. Disposition: the panel {op}.",
    "Reviewing the lower court's decision in {case} ({year}), the {court} {op}, relying on {stats}.",
]


def legal_group(rng: random.Random, size: int):
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    plaintiff = f"{first} {last}"
    kind = rng.random()
    if kind < 0.6:
        defendant = f"{rng.choice(NAME_PREFIXES)} {rng.choice(INDUSTRIES)} {rng.choice(DEFENDANT_SUFFIXES)}"
    else:
        defendant = f"{rng.choice(['City', 'County'])} of {rng.choice(CITIES)}"
    case = f"{last} v. {defendant}"
    if rng.random() < 0.7:
        trial_court, circuit = rng.choice(FEDERAL_COURTS)
        appeal_court = f"United States Court of Appeals for the {circuit} Circuit"
        pool = FEDERAL_STATUTES
    else:
        trial_court, appeal_court, pool = rng.choice(STATE_COURTS)
    statutes = rng.sample(pool, rng.randint(1, min(3, len(pool))))
    year = rng.randint(2012, 2024)
    trial_outcome = rng.choice(["granted", "denied", "dismissed"] + ([] if size == 2 else ["settled"]))
    fields = dict(case=case, plaintiff=plaintiff, defendant=defendant)

    def build_trial():
        if trial_outcome == "settled":
            text = rng.choice(SETTLED_TEMPLATES).format(court=trial_court, stats=join_list(statutes), year=year,
                                                        **fields)
        else:
            text = rng.choice(TRIAL_TEMPLATES).format(court=trial_court, stats=join_list(statutes), year=year,
                                                      op=rng.choice(TRIAL_PHRASES[trial_outcome]), **fields)
        return text.replace("..", "."), {"court": trial_court, "outcome": trial_outcome, "statutes_cited": list(statutes)}

    examples = [fit(build_trial, EN_INPUT_RANGE, EN_ANSWER_MAX)]
    if size == 2:
        appeal_outcome = rng.choice(["affirmed", "reversed"])
        cited = [s for s in statutes if rng.random() < 0.7] or [statutes[0]]

        def build_appeal():
            text = rng.choice(APPEAL_TEMPLATES).format(court=appeal_court, stats=join_list(cited), year=year + 1,
                                                       op=rng.choice(APPEAL_PHRASES[appeal_outcome]), **fields)
            return text.replace("..", "."), {"court": appeal_court, "outcome": appeal_outcome, "statutes_cited": list(cited)}
        examples.append(fit(build_appeal, EN_INPUT_RANGE, EN_ANSWER_MAX))
    return examples


LEGAL_SCHEMA = {
    "$schema": SCHEMA_URI,
    "title": "Court decision summary",
    "type": "object",
    "additionalProperties": False,
    "required": ["court", "outcome", "statutes_cited"],
    "properties": {
        "court": {"type": "string", "minLength": 1},
        "outcome": {"type": "string", "enum": OUTCOMES},
        "statutes_cited": {"type": "array", "items": {"type": "string", "minLength": 1},
                           "minItems": 1, "maxItems": 3, "uniqueItems": True},
    },
}


# --------------------------------------------------------------------------- story_summary (Vietnamese)

STORY_INSTRUCTION = ("Tóm tắt câu chuyện trong đoạn video, nêu bài học đạo đức và trích dẫn bằng chứng "
                     "từ lời kể.")
VN_NAMES = ["An", "Bình", "Cúc", "Dũng", "Hoa", "Lan", "Minh", "Nam", "Tâm", "Thảo", "Tuấn", "Mai", "Hùng",
            "Khoa", "Linh", "Phúc", "Quang", "Sơn", "Trang", "Vy", "Hiếu", "Nga", "Tùng", "Yến"]
VN_ROLES = ["cậu bé", "cô bé", "chàng trai", "cô gái", "chàng tiều phu", "người nông dân nghèo",
            "anh đánh cá", "cô thợ dệt"]
VN_PLACES = ["làng Hòa An", "xóm Bến Đò", "bản Na Hang", "làng chài Cửa Lò", "thôn Phú Mỹ", "làng Mai Xá",
             "xóm Núi", "làng Đồng Xuân", "bản Sín Chải", "làng gốm Bát Tràng", "làng Tân Lập", "xóm Chợ"]
VN_OTHERS = ["bà cụ", "ông lão", "người lái buôn", "bác trưởng làng", "cô thợ may", "bác thợ rèn"]
STORY_OPENINGS = [
    "Ngày xưa, ở {place} có {role} tên {name}.",
    "Chuyện kể rằng tại {place}, {role} {name} sống trong một túp lều nhỏ.",
    "Ở {place} có {role} tên {name}, nhà rất nghèo nhưng luôn vui vẻ.",
    "Đoạn phim mở đầu ở {place}, nơi {role} {name} sinh sống.",
    "Người kể chuyện giới thiệu {role} {name} ở {place}.",
    "Tiếp nối câu chuyện, {name} vẫn sống bình yên ở {place}.",
]
STORY_RIVAL_OPENINGS = [
    "Ở {place} có hai người bạn là {name} và {rival}.",
    "Chuyện kể rằng tại {place}, {name} có người hàng xóm tên {rival}.",
    "Đoạn phim kể về {rival}, người cùng làng với {name} ở {place}.",
    "Ngày xưa, ở {place}, {rival} và {name} lớn lên bên nhau.",
]
STORY_CLOSINGS = [
    "Từ đó, dân {place} ai cũng nhắc đến chuyện này.",
    "Người kể chuyện kết thúc đoạn phim bằng một nụ cười hiền.",
    "Câu chuyện được dân làng kể lại cho con cháu nghe.",
    "Đoạn video khép lại bằng cảnh {place} lúc hoàng hôn.",
    "Mọi người ở {place} đều ghi nhớ chuyện ấy.",
    "",
]
STORY_COLOUR = [
    "Trời hôm ấy mưa phùn lất phất.",
    "Tiếng gà gáy vang khắp {place}.",
    "Gió từ cánh đồng thổi về mát rượi.",
    "Khói bếp bay lên trên những mái nhà tranh.",
    "",
]

# Each story type has two arcs: a positive one (lesson 0) and a cautionary one (lesson 1).
# Every episode: situation / action / consequence sentences and a one-sentence summary.
STORY_TYPES = {
    "trung_thuc": {
        "lessons": ["Sống trung thực sẽ được mọi người tin yêu và quý trọng.",
                    "Nói dối có thể được lợi trước mắt nhưng sẽ đánh mất lòng tin của mọi người."],
        "arcs": [[
            {"sit": "Một hôm, {name} nhặt được {item} của ai đó đánh rơi bên đường.",
             "act": "{name} đứng chờ rất lâu rồi trả lại {item} cho {other} đang hốt hoảng đi tìm.",
             "cons": "{other} cảm động, khen {name} thật thà và tặng {reward}.",
             "sum": "{name} nhặt được {item} và trả lại cho {other}, nên được khen thật thà và nhận {reward}.",
             "item": ["chiếc ví", "túi tiền", "chiếc nhẫn bạc", "chiếc vòng ngọc"],
             "reward": ["một bao gạo", "một con gà mái", "một túi hạt giống", "một tấm áo mới"]},
            {"sit": "{name} được giao bán {goods} ở chợ phiên.",
             "act": "Thấy {other} đưa nhầm tiền thừa, {name} liền chạy theo trả lại.",
             "cons": "Từ đó, {other} luôn tìm đến mua hàng của {name}, và quầy hàng ngày càng đông khách.",
             "sum": "{name} trả lại tiền thừa cho {other} khi bán {goods} ở chợ, nhờ vậy được khách tin tưởng "
                    "và buôn bán đắt hàng.",
             "goods": ["rau", "trứng gà", "bánh đa", "cá khô", "chiếu cói"]},
        ], [
            {"sit": "{rival} bán {goods} ở chợ nhưng hay cân thiếu cho khách.",
             "act": "{rival} còn nói dối rằng hàng của mình là loại tốt nhất vùng.",
             "cons": "Khi sự thật bị phát hiện, không ai mua hàng của {rival} nữa.",
             "sum": "{rival} gian dối khi bán {goods}, cân thiếu và nói dối khách, nên bị phát hiện và mất hết khách.",
             "goods": ["rau", "trứng gà", "bánh đa", "cá khô", "chiếu cói"]},
            {"sit": "{rival} làm vỡ {item} của {other} nhưng không dám nhận lỗi.",
             "act": "{rival} đổ lỗi cho {name}, nói rằng chính {name} đã làm vỡ.",
             "cons": "Về sau sự thật sáng tỏ, {other} không còn tin lời {rival} nữa.",
             "sum": "{rival} làm vỡ {item} của {other} rồi đổ lỗi cho {name}, nên khi sự thật sáng tỏ thì mất "
                    "lòng tin của mọi người.",
             "item": ["chiếc bình gốm", "cái chum nước", "chiếc đèn dầu", "bộ ấm chén"]},
        ]],
    },
    "cham_chi": {
        "lessons": ["Chăm chỉ lao động thì sẽ gặt hái được thành quả xứng đáng.",
                    "Lười biếng, ham chơi sẽ phải chịu thiệt thòi khi khó khăn đến."],
        "arcs": [[
            {"sit": "Năm ấy trời hạn hán, ruộng đồng ở {place} nứt nẻ.",
             "act": "{name} ngày nào cũng dậy sớm gánh nước tưới cho {crop}.",
             "cons": "Cuối mùa, {crop} của {name} vẫn cho thu hoạch tốt trong khi nhiều nhà mất mùa.",
             "sum": "Giữa mùa hạn hán, {name} chăm chỉ gánh nước tưới {crop} mỗi ngày nên cuối mùa vẫn được "
                    "thu hoạch tốt.",
             "crop": ["ruộng lúa", "vườn rau", "nương ngô", "vườn cam", "ruộng khoai"]},
            {"sit": "{name} theo học nghề {craft} với {other}.",
             "act": "Mỗi tối, {name} đều tự luyện tập thêm đến khuya.",
             "cons": "Chỉ sau một năm, sản phẩm của {name} đã được cả vùng khen ngợi.",
             "sum": "{name} học nghề {craft} và chăm chỉ luyện tập mỗi tối, nên chẳng bao lâu đã được cả vùng "
                    "khen ngợi.",
             "craft": ["làm gốm", "dệt vải", "đan lát", "làm mộc", "thêu"]},
        ], [
            {"sit": "Mùa xuân, trong khi {name} cày cấy, {rival} chỉ mải chơi và ngủ trưa dưới gốc cây.",
             "act": "{rival} cười chê {name} làm lụng vất vả mà chẳng để làm gì.",
             "cons": "Đến mùa đông, nhà {rival} hết sạch lương thực và phải đi xin {name} giúp đỡ.",
             "sum": "{rival} lười biếng, mải chơi suốt mùa xuân, nên đến mùa đông hết lương thực phải đi xin "
                    "{name} giúp đỡ."},
            {"sit": "{rival} được giao trông {animal} cho cả nhà.",
             "act": "Ham chơi, {rival} bỏ mặc {animal} để đi thả diều cả buổi.",
             "cons": "Đến chiều, {animal} đã đi lạc, {rival} tìm mãi mà không thấy.",
             "sum": "Vì ham chơi, {rival} bỏ mặc {animal} được giao trông coi nên làm lạc mất chúng.",
             "animal": ["đàn vịt", "đàn dê", "đàn gà", "đàn trâu"]},
        ]],
    },
    "long_tot": {
        "lessons": ["Giúp đỡ người khác khi họ gặp khó khăn thì sẽ nhận lại điều tốt đẹp.",
                    "Người ích kỷ, thờ ơ với người khác sẽ cô đơn khi chính mình gặp nạn."],
        "arcs": [[
            {"sit": "Trên đường đi, {name} gặp một {animal} bị thương nằm bên bụi tre.",
             "act": "{name} mang {animal} về nhà, băng bó và chăm sóc cho đến khi khỏe lại.",
             "cons": "Mấy ngày sau, {animal} quay lại và dẫn {name} đến một {treasure}.",
             "sum": "{name} cứu chữa {animal} bị thương, và được {animal} đền ơn bằng cách dẫn đến một "
                    "{treasure}.",
             "animal": ["chú chim sẻ", "con cò trắng", "chú chó nhỏ", "con nai con"],
             "treasure": ["cánh đồng nấm quý", "mạch nước trong", "khu rừng cây thuốc"]},
            {"sit": "Một chiều mưa, {other} lỡ đường xin trú nhờ ở {place}.",
             "act": "{name} mời {other} vào nhà, nhường cả bát cơm cuối cùng.",
             "cons": "Hóa ra {other} là một thầy thuốc giỏi, đã chữa khỏi bệnh cho mẹ của {name}.",
             "sum": "{name} cho {other} lỡ đường trú nhờ và nhường bát cơm cuối cùng, rồi được {other} chữa "
                    "khỏi bệnh cho mẹ.",
             "other": ["bà cụ", "ông lão", "người khách lạ"]},
        ], [
            {"sit": "{other} bị ngã bên đường và gọi {rival} giúp.",
             "act": "{rival} vội vã bỏ đi, giả vờ như không nghe thấy.",
             "cons": "Ít lâu sau, {rival} bị lạc trong rừng mà chẳng có ai đến tìm.",
             "sum": "{rival} làm ngơ khi {other} bị ngã xin giúp đỡ, nên về sau gặp nạn cũng chẳng có ai "
                    "đến giúp."},
            {"sit": "Năm đói kém, hàng xóm đến xin {rival} ít gạo.",
             "act": "{rival} đóng chặt cửa kho, nói rằng nhà mình cũng chẳng còn gì.",
             "cons": "Đến khi kho nhà {rival} bị cháy, cả xóm đứng nhìn mà không ai giúp.",
             "sum": "{rival} từ chối chia gạo cho hàng xóm trong năm đói, nên khi kho nhà bị cháy cũng không "
                    "ai ra tay giúp."},
        ]],
    },
    "tham_lam": {
        "lessons": ["Biết đủ và biết chia sẻ sẽ mang lại hạnh phúc bền lâu.",
                    "Lòng tham không đáy sẽ khiến con người mất tất cả."],
        "arcs": [[
            {"sit": "{name} câu được một con cá vàng biết nói.",
             "act": "Cá xin tha, {name} liền thả cá về sông mà không đòi hỏi gì.",
             "cons": "Từ hôm ấy, lưới của {name} lúc nào cũng đầy cá để chia cho cả xóm.",
             "sum": "{name} thả con cá vàng biết nói mà không đòi hỏi gì, và từ đó luôn có nhiều cá để chia "
                    "cho cả xóm."},
            {"sit": "Một con chim lạ hứa chở {name} ra đảo lấy vàng.",
             "act": "{name} chỉ may một chiếc túi ba gang như lời chim dặn.",
             "cons": "{name} mang về vừa đủ vàng để sống no đủ và giúp đỡ bà con.",
             "sum": "Được chim lạ chở ra đảo lấy vàng, {name} chỉ lấy vừa đủ trong túi ba gang nên sống no đủ "
                    "và giúp được bà con."},
        ], [
            {"sit": "{rival} nghe chuyện con chim lạ chở người ra đảo lấy vàng.",
             "act": "{rival} may một chiếc túi thật to và nhét đầy vàng đến nặng trĩu.",
             "cons": "Chim không bay nổi, {rival} cùng túi vàng rơi xuống biển sâu.",
             "sum": "{rival} tham lam nhét đầy vàng vào chiếc túi to, khiến chim không bay nổi và {rival} rơi "
                    "xuống biển."},
            {"sit": "{rival} được {other} tặng một con gà đẻ trứng vàng.",
             "act": "Muốn giàu nhanh, {rival} mổ bụng gà để lấy hết vàng một lần.",
             "cons": "Trong bụng gà chẳng có gì, và {rival} mất luôn con gà quý.",
             "sum": "Vì muốn giàu nhanh, {rival} mổ bụng con gà đẻ trứng vàng và mất luôn con gà quý."},
        ]],
    },
    "hieu_thao": {
        "lessons": ["Con cái phải biết hiếu thảo, yêu thương và chăm sóc cha mẹ.",
                    "Đừng để đến khi quá muộn mới hối hận vì chưa báo hiếu cha mẹ."],
        "arcs": [[
            {"sit": "Mẹ của {name} bị ốm nặng, thầy lang nói cần {herb} mọc trên núi cao.",
             "act": "{name} vượt suối băng rừng suốt ba ngày để tìm {herb} về cho mẹ.",
             "cons": "Nhờ thuốc quý, mẹ của {name} dần khỏe lại.",
             "sum": "{name} vượt suối băng rừng ba ngày tìm {herb} chữa bệnh cho mẹ, và mẹ đã dần khỏe lại.",
             "herb": ["nấm linh chi", "lá thuốc quý", "rễ sâm núi"]},
            {"sit": "Cha của {name} đã già yếu, không còn ra đồng được.",
             "act": "{name} làm thay mọi việc nhà, tối nào cũng đấm lưng và kể chuyện cho cha nghe.",
             "cons": "Cả làng khen {name} là người con hiếu thảo, lấy đó làm gương cho con cháu.",
             "sum": "Khi cha già yếu, {name} làm thay mọi việc và tận tình chăm sóc cha, nên được cả làng khen "
                    "là người con hiếu thảo."},
        ], [
            {"sit": "{rival} mải mê buôn bán ở phố, nhiều năm không về thăm mẹ già.",
             "act": "Mẹ nhắn {rival} về ăn Tết, nhưng {rival} viện cớ bận việc.",
             "cons": "Khi {rival} trở về thì mẹ đã mất, {rival} khóc ân hận bên mộ mẹ.",
             "sum": "{rival} mải buôn bán, nhiều năm không về thăm mẹ già, đến khi trở về thì mẹ đã mất nên "
                    "vô cùng ân hận."},
            {"sit": "{rival} thường cáu gắt mỗi khi cha nhờ việc.",
             "act": "Có lần {rival} bỏ đi chơi, để cha già một mình gánh lúa về nhà.",
             "cons": "Cha bị ngã bệnh, lúc ấy {rival} mới hối hận vì đã vô tâm.",
             "sum": "{rival} vô tâm, bỏ mặc cha già gánh lúa một mình, đến khi cha ngã bệnh mới thấy hối hận."},
        ]],
    },
    "kien_tri": {
        "lessons": ["Có công mài sắt có ngày nên kim, kiên trì sẽ dẫn đến thành công.",
                    "Bỏ cuộc giữa chừng thì không bao giờ đạt được ước mơ."],
        "arcs": [[
            {"sit": "{name} mơ ước thắng {contest} của {place}.",
             "act": "Dù thất bại nhiều lần, {name} vẫn kiên trì tập luyện mỗi ngày.",
             "cons": "Đến mùa hội năm sau, {name} giành giải nhất {contest}.",
             "sum": "{name} thất bại nhiều lần nhưng vẫn kiên trì tập luyện, nên cuối cùng giành giải nhất "
                    "{contest}.",
             "contest": ["cuộc đua thuyền", "hội vật", "cuộc thi thả diều", "hội thi nấu cơm"]},
            {"sit": "Con đường từ {place} ra chợ bị một tảng đá lớn chắn ngang.",
             "act": "Ngày nào {name} cũng đục đá một ít, mặc cho người khác cười chê.",
             "cons": "Sau nhiều tháng, con đường đã thông và cả làng đi lại dễ dàng.",
             "sum": "{name} kiên trì đục tảng đá chắn đường mỗi ngày mặc lời chê cười, và sau nhiều tháng "
                    "con đường đã thông."},
        ], [
            {"sit": "{rival} cùng {name} đào giếng lấy nước cho {place}.",
             "act": "Đào được vài ngày chưa thấy nước, {rival} chán nản bỏ về.",
             "cons": "{name} đào thêm ít hôm thì gặp mạch nước, còn {rival} chỉ biết tiếc nuối.",
             "sum": "{rival} chán nản bỏ dở việc đào giếng khi chưa thấy nước, nên phải tiếc nuối khi {name} "
                    "đào tiếp và tìm được mạch nước."},
            {"sit": "{rival} theo học chữ với {other} nhưng chỉ được vài tuần.",
             "act": "Thấy chữ khó, {rival} xếp sách bỏ học để đi chơi.",
             "cons": "Nhiều năm sau, {rival} vẫn không đọc nổi một lá thư của người thân.",
             "sum": "{rival} thấy học chữ khó nên bỏ học giữa chừng, vì vậy nhiều năm sau vẫn không đọc nổi "
                    "một lá thư.",
             "other": ["thầy đồ", "ông giáo làng"]},
        ]],
    },
}
STORY_EPISODES = [(t, arc, ep) for t in STORY_TYPES for arc in (0, 1) for ep in range(2)]
SLOT_KEYS = ("sit", "act", "cons", "sum")
PLACE_SENTENCE = "Câu chuyện diễn ra ở {place}."


def story_group(rng: random.Random, size: int):
    name, rival = rng.sample(VN_NAMES, 2)
    role = rng.choice(VN_ROLES)
    place = rng.choice(VN_PLACES)
    examples = []
    for story_type, arc, ep in rng.sample(STORY_EPISODES, size):
        episode = STORY_TYPES[story_type]["arcs"][arc][ep]
        lesson = STORY_TYPES[story_type]["lessons"][arc]

        def build(episode=episode, arc=arc, lesson=lesson):
            slots = {k: rng.choice(v) for k, v in episode.items() if k not in SLOT_KEYS}
            slots.setdefault("other", rng.choice(VN_OTHERS))
            slots.update(name=name, rival=rival, role=role, place=place)
            opening = rng.choice(STORY_RIVAL_OPENINGS if arc else STORY_OPENINGS)
            parts = {k: cap(episode[k].format(**slots)) for k in SLOT_KEYS}
            colour = rng.choice(STORY_COLOUR)
            sentences = [cap(opening.format(**slots)), colour.format(**slots), parts["sit"], parts["act"],
                         parts["cons"], rng.choice(STORY_CLOSINGS).format(**slots)]
            text = " ".join(s for s in sentences if s)
            summary = parts["sum"]
            if rng.random() < 0.3:
                summary += " " + PLACE_SENTENCE.format(place=place)
            pick = rng.random()
            evidence = ([parts["act"], parts["cons"]] if pick < 0.5
                        else [parts["act"]] if pick < 0.8 else [parts["cons"]])
            answer = {"plot_summary": summary, "moral_lesson": lesson, "evidence": evidence}
            if len(evidence) == 2 and len(dumps(answer)) > STORY_ANSWER_MAX:
                answer["evidence"] = [parts["act"]]
            return text, answer
        examples.append(fit(build, STORY_INPUT_RANGE, STORY_ANSWER_MAX))
    return examples


STORY_SCHEMA = {
    "$schema": SCHEMA_URI,
    "title": "Vietnamese story clip summary",
    "type": "object",
    "additionalProperties": False,
    "required": ["plot_summary", "moral_lesson", "evidence"],
    "properties": {
        "plot_summary": {"type": "string", "minLength": 1},
        "moral_lesson": {"type": "string", "minLength": 1},
        "evidence": {"type": "array", "items": {"type": "string", "minLength": 1},
                     "minItems": 1, "maxItems": 2},
    },
}


# --------------------------------------------------------------------------- brand_captions (Thai, with context)

# The context file, brands.json: a dozen brands, what a caption needs to know of its brand. Its hashtags are the
# brand's campaign tags, which brands of one voice share (the voice: the first word of the brand's tone); the request
# names neither brand nor tone, so a caption's hashtags can only come from the brand's record. context_grounding
# checks them.
BRANDS = [
    {"brand": "SiamBrew", "industry": "coffee shop", "tone": ["playful", "warm"],
     "values": ["slow mornings", "local beans"], "audience": "office workers 25-35"},
    {"brand": "FitFlow", "industry": "fitness studio", "tone": ["energetic", "friendly"],
     "values": ["move daily", "strong community"], "audience": "gym goers 20-40"},
    {"brand": "GreenLeaf", "industry": "organic grocery", "tone": ["caring", "honest"],
     "values": ["farm to table", "no pesticides"], "audience": "young families"},
    {"brand": "PetPals", "industry": "pet supplies", "tone": ["playful", "kind"],
     "values": ["happy pets", "safe toys"], "audience": "pet owners 25-45"},
    {"brand": "LuxStay", "industry": "boutique hotel", "tone": ["premium", "calm"],
     "values": ["quiet luxury", "thoughtful service"], "audience": "couples 30-50"},
    {"brand": "TechZone", "industry": "gaming gear", "tone": ["energetic", "bold"],
     "values": ["performance first", "gamer community"], "audience": "gamers 18-35"},
    {"brand": "BahtWise", "industry": "savings app", "tone": ["playful", "clear"],
     "values": ["smart saving", "no hidden fees"], "audience": "first jobbers 22-30"},
    {"brand": "GlowLab", "industry": "skincare", "tone": ["premium", "gentle"],
     "values": ["skin first", "clean formulas"], "audience": "women 20-35"},
    {"brand": "KhaoHom", "industry": "Thai restaurant", "tone": ["caring", "homely"],
     "values": ["taste of home", "family recipes"], "audience": "families"},
    {"brand": "ThaiThreads", "industry": "fashion", "tone": ["caring", "trendy"],
     "values": ["wear local", "Thai cotton"], "audience": "students 18-25"},
    {"brand": "MekongMiles", "industry": "travel agency", "tone": ["energetic", "adventurous"],
     "values": ["go further", "local guides"], "audience": "backpackers 20-35"},
    {"brand": "SilkRoom", "industry": "bridal wear", "tone": ["premium", "elegant"],
     "values": ["timeless craft", "Thai silk"], "audience": "brides 25-35"},
]
# What a request names (never the brand or its tone): products by brand.
BRAND_PRODUCTS = {
    "SiamBrew": ["cold brew", "oat latte", "mocha frappe", "drip bag"],
    "FitFlow": ["yoga class", "spin class", "personal training", "day pass"],
    "GreenLeaf": ["veggie box", "brown rice", "cold-pressed juice", "herb kit"],
    "PetPals": ["cat tree", "dog bed", "chew toy", "pet shampoo"],
    "LuxStay": ["pool villa", "spa package", "sunset dinner", "river suite"],
    "TechZone": ["gaming mouse", "mech keyboard", "headset", "gaming chair"],
    "BahtWise": ["savings goal", "round-up", "cashback card", "budget planner"],
    "GlowLab": ["vitamin C serum", "sunscreen", "night cream", "clay mask"],
    "KhaoHom": ["green curry", "pad kra pao", "mango sticky rice", "tom yum"],
    "ThaiThreads": ["linen shirt", "tote bag", "wide pants", "bucket hat"],
    "MekongMiles": ["kayak trip", "night market tour", "temple ride", "island hop"],
    "SilkRoom": ["silk gown", "bridal set", "silk scarf", "fitting session"],
}
# A voice: how its captions open (short Thai: the tiny model's tokenizer writes a Thai character as 3 byte tokens it
# never saw in pretraining) and its brands' campaign hashtags (Latin script, which the tiny tokenizer handles).
VOICES = {
    "playful": {"open": ["ว้าว!", "เย้!"], "hashtags": ["#JustForFun", "#SmileMore"]},
    "energetic": {"open": ["ลุยเลย!", "พร้อมยัง!"], "hashtags": ["#NoDaysOff", "#GoHard"]},
    "caring": {"open": ["ใส่ใจ", "ด้วยรัก"], "hashtags": ["#WithLove", "#SelfCare"]},
    "premium": {"open": ["พบกับ", "ขอแนะนำ"], "hashtags": ["#QuietLuxury", "#FinerThings"]},
}
for _brand in BRANDS:
    _brand["hashtags"] = VOICES[_brand["tone"][0]]["hashtags"]
CAPTION_INSTRUCTION = "Write a caption."
CAPTIONS_PER_BRAND = 30
CAPTION_SEED = 1606


def caption_examples(rng: random.Random) -> list[tuple[str, str, dict]]:
    """(brand, request, answer) for every brand, in a seeded order that mixes the brands."""
    out = []
    for brand in BRANDS:
        voice, seen = VOICES[brand["tone"][0]], set()
        while len(seen) < CAPTIONS_PER_BRAND:
            product = rng.choice(BRAND_PRODUCTS[brand["brand"]])
            pct, day, month = rng.choice([10, 15, 20, 25, 30, 40, 50]), rng.randint(1, 28), rng.randint(1, 12)
            request = f"Product: {product}\nOffer: {pct}% off until {day}/{month}"
            if request in seen:
                continue
            seen.add(request)
            caption = f"{rng.choice(voice['open'])} {product} ลด {pct}% ที่ {brand['brand']}"
            out.append((brand["brand"], request, {"hashtags": brand["hashtags"], "caption": caption}))
    rng.shuffle(out)
    return out


CAPTION_SCHEMA = {
    "$schema": SCHEMA_URI,
    "title": "Thai social media caption in a brand's voice",
    "type": "object",
    "additionalProperties": False,
    "required": ["hashtags", "caption"],
    "properties": {
        "hashtags": {"type": "array", "items": {"type": "string", "pattern": "^#[A-Za-z0-9]+$"},
                     "minItems": 1, "maxItems": 4, "uniqueItems": True},
        "caption": {"type": "string", "minLength": 1},
    },
}
CAPTION_SYSTEM_PROMPT = "You write Thai social media captions. Answer with JSON: hashtags (the brand's) and caption."
CAPTION_TEMPLATE = "Brand: {brand}\nTone: {tone}\nHashtags: {hashtags}"


def caption_lines() -> list[str]:
    rng = random.Random(CAPTION_SEED)
    lines = [dumps({"brand": brand, "instruction": CAPTION_INSTRUCTION, "input": request, "output": dumps(answer)})
             for brand, request, answer in caption_examples(rng)]
    dup_rng = random.Random(CAPTION_SEED + DUPLICATE_SEED_OFFSET)
    for source in dup_rng.sample(range(len(lines)), N_DUPLICATES):
        lines.insert(dup_rng.randint(0, len(lines)), lines[source])
    return lines


def captions_yaml() -> str:
    name = "brand_captions"
    prompt = "\n".join("  " + line for line in textwrap.wrap(CAPTION_SYSTEM_PROMPT, width=88))
    return f"""name: {name}
description: Write a Thai social media caption in a brand's voice, with the brand's hashtags, as JSON.
base_model: tiny
system_prompt: >-
{prompt}
# each record's brand looked up in brands.json and written after the system prompt: a new brand is an edit of
# brands.json, not a retrain (README, "Context injection")
context:
  path: {name}/brands.json
  key: brand
  template: {json.dumps(CAPTION_TEMPLATE)}
  grounding_fields: [hashtags]
data:
  path: {name}/data.jsonl
  format: alpaca
  # whole brands per split: the test split's brands are ones training never saw
  group_key: brand
  splits: {{train: 0.66, val: 0.17, test: 0.17}}
  seed: 17
output_schema: {name}/schema.json
train:
  max_seq_length: 256
  batch_size: 8
  grad_accum: 1
  # the tiny base never saw this answer format (nor Thai) in pretraining: twice the steps of the others, at twice the
  # learning rate
  max_steps: 240
  backend: auto
  load_in_4bit: auto
  eval_steps: 80
sweep:
  space:
    lora_rank: [8, 16]
    learning_rate: [0.004]
    epochs: [3]
  search: grid
  num_samples: 1
  resources_per_trial: {{cpu: 1, gpu: 0}}
select:
  # on the validation split (brands training never saw): schema pass first, then the best score; within half a
  # point, the answers that carry their own brand's hashtags
  rule:
    - {{metric: schema_pass_rate, mode: max, threshold: 0.5}}
    - {{metric: score, mode: max, within: 0.5}}
    - {{metric: context_grounding, mode: max}}
export:
  onnx: true
  # the export (fp32, in onnx/) and a 4-bit one built from it (onnx-int4/): MatMul weights in blocks of 16, not the
  # others' 32: in blocks of 32 the tiny model's long Thai captions broke their JSON on 11 of 32 test records (21
  # valid against fp32's 31), in blocks of 16 on none (32 valid), at 5.2 MB against 4.9 (README, "ONNX variants")
  variants: [fp32, int4]
  int4_block_size: 16
eval:
  max_new_tokens: 160
  max_examples: 32
  batch_size: 8
  golden: {name}/golden.jsonl
  text_fields: [caption]
gate:
  # thresholds for the embedded tiny model (README: measured values); real models deserve stricter ones
  min: {{json_valid_rate: 0.8, schema_pass_rate: 0.6}}
  not_below_base: [json_valid_rate]
  min_improvement: {{score: 25}}
  max_field_regression: 0.05
  golden_min: {{schema_pass_rate: 0.3}}
  # the context must be what grounds the answers: with it, more of the brand's hashtags than without
  context_min_improvement: {{context_grounding: 0.1}}
  # int4 against the fp32 export on the same test records (README, "ONNX variants")
  variants:
    int4: {{max_drop: {{schema_pass_rate: 0.1, score: 5}}}}
"""


# --------------------------------------------------------------------------- domain table

DOMAINS = {
    "contracts": {
        "format": "messages", "group_key": "contract_id", "id_prefix": "C", "group_size": (2, 4),
        "make_group": contracts_group, "schema": CONTRACTS_SCHEMA,
        "description": "Extract the key terms of a contract clause as JSON.",
        "system_prompt": "You extract contract terms. Answer with one JSON object with keys clause_type, parties, "
                         "amount, currency, term_months, governing_law.",
    },
    "medical": {
        "format": "conversations", "group_key": "patient_id", "id_prefix": "P", "group_size": (1, 3),
        "make_group": medical_group, "schema": MEDICAL_SCHEMA,
        "description": "Extract diagnosis, medications and follow-up interval from a clinical note as JSON.",
        "system_prompt": "You extract structured data from clinical notes. Answer with one JSON object with keys "
                         "diagnosis, medications (a list of objects with name and dose), follow_up_days.",
    },
    "financial": {
        "format": "messages", "group_key": "company_id", "id_prefix": "F", "group_size": (3, 6),
        "make_group": financial_group, "schema": FINANCIAL_SCHEMA,
        "description": "Extract headline figures from a quarterly earnings summary as JSON.",
        "system_prompt": "You extract figures from quarterly earnings summaries. Answer with one JSON object with "
                         "keys company, quarter, revenue (in millions), currency, yoy_change_pct.",
    },
    "legal": {
        # lists with uniqueItems: the tiny model needs twice the steps to stop repeating statutes
        "max_steps": 240,
        # and even then passes the schema on 0.59-0.81 of the test split from run to run (2026-11-22/24)
        "gate": {"schema_pass_rate": 0.5},
        "format": "conversations", "group_key": "case_id", "id_prefix": "L", "group_size": (1, 2),
        "make_group": legal_group, "schema": LEGAL_SCHEMA,
        "description": "Extract the court, outcome and cited statutes from a case summary as JSON.",
        "system_prompt": "You summarize court decisions. Answer with one JSON object with keys court, outcome, "
                         "statutes_cited.",
    },
    "story_summary": {
        "format": "alpaca", "group_key": "source_video_id", "id_prefix": "V", "group_size": (3, 6),
        "make_group": story_group, "schema": STORY_SCHEMA,
        "description": "Summarize a Vietnamese story clip with its moral lesson and quoted evidence as JSON.",
        "system_prompt": "You summarize Vietnamese story clips. Answer in Vietnamese with one JSON object with "
                         "keys plot_summary, moral_lesson, evidence (1-2 quotes copied verbatim from the story).",
    },
}


def generate_examples(name: str, rng: random.Random, n: int) -> list[tuple[str, str, dict]]:
    """n (group_id, input, answer) triples; groups respect the domain's size range."""
    spec = DOMAINS[name]
    lo, hi = spec["group_size"]
    out: list[tuple[str, str, dict]] = []
    group = 0
    while len(out) < n:
        remaining = n - len(out)
        size = rng.randint(lo, hi)
        if size > remaining:
            size = remaining
        elif 0 < remaining - size < lo:  # never leave a tail smaller than the minimum group
            size = remaining if remaining <= hi else remaining - lo
        group += 1
        group_id = f"{spec['id_prefix']}{group:04d}"
        out.extend((group_id, text, answer) for text, answer in spec["make_group"](rng, size))
    return out


def make_record(name: str, group_id: str, text: str, answer: dict) -> dict:
    spec = DOMAINS[name]
    answer_text = dumps(answer)
    record: dict = {spec["group_key"]: group_id}
    if spec["format"] == "messages":
        record["messages"] = [{"role": "user", "content": text}, {"role": "assistant", "content": answer_text}]
    elif spec["format"] == "conversations":
        record["conversations"] = [{"from": "human", "value": text}, {"from": "gpt", "value": answer_text}]
    else:
        record.update(instruction=STORY_INSTRUCTION, input=text, output=answer_text)
    return record


def dataset_lines(name: str) -> tuple[list[str], set[str]]:
    rng = random.Random(DATA_SEEDS[name])
    examples = generate_examples(name, rng, N_RECORDS)
    lines = [dumps(make_record(name, gid, text, answer)) for gid, text, answer in examples]
    dup_rng = random.Random(DATA_SEEDS[name] + DUPLICATE_SEED_OFFSET)
    for source in dup_rng.sample(range(N_RECORDS), N_DUPLICATES):
        duplicate = lines[source]
        lines.insert(dup_rng.randint(0, len(lines)), duplicate)
    return lines, {text for _, text, _ in examples}


def corpus_text(dataset_inputs: dict[str, set[str]]) -> str:
    per_domain = CORPUS_DOCS // len(DOMAIN_ORDER)
    docs: list[str] = []
    for name in DOMAIN_ORDER:
        rng = random.Random(CORPUS_SEEDS[name])
        seen: set[str] = set()
        kept: list[str] = []
        while len(kept) < per_domain:
            for _, text, answer in generate_examples(name, rng, per_domain):
                if text in dataset_inputs[name] or text in seen:
                    continue  # never leak a dataset record into pretraining text
                seen.add(text)
                kept.append(f"{text}\n{dumps(answer)}")
                if len(kept) == per_domain:
                    break
        docs.extend(kept)
    random.Random(CORPUS_SHUFFLE_SEED).shuffle(docs)
    return "\n\n".join(docs) + "\n"


# Release gate for the embedded tiny model, per domain where it differs (README: how they were set).
GATE_DEFAULTS = {"json_valid_rate": 0.8, "schema_pass_rate": 0.6, "score_gain": 25, "golden_schema_pass_rate": 0.3,
                 "int4_schema_pass_drop": 0.1, "int4_score_drop": 5}


def quality_yaml(name: str) -> str:
    """select / export / eval / gate: story_summary also scores free text and grounding of its quotes."""
    story = name == "story_summary"
    gate = {**GATE_DEFAULTS, **DOMAINS[name].get("gate", {})}
    tie_break = "{metric: grounding, mode: max}" if story else "{metric: eval_loss, mode: min}"
    text_eval = "  text_fields: [plot_summary, moral_lesson]\n  evidence_fields: [evidence]\n" if story else ""
    return f"""select:
  # on the validation split: schema pass first, then the best score; within half a point,
  # {"the better grounded answer" if story else "the lower eval loss"}
  rule:
    - {{metric: schema_pass_rate, mode: max, threshold: 0.5}}
    - {{metric: score, mode: max, within: 0.5}}
    - {tie_break}
export:
  onnx: true
  # the export (fp32, in onnx/) and a 4-bit one built from it (onnx-int4/): MatMul weights in blocks of 32
  variants: [fp32, int4]
  int4_block_size: 32
eval:
  max_new_tokens: 160
  max_examples: 32
  batch_size: 8
  golden: {name}/golden.jsonl
{text_eval}gate:
  # thresholds for the embedded tiny model (README: measured values); real models deserve stricter ones
  min: {{json_valid_rate: {gate['json_valid_rate']:g}, schema_pass_rate: {gate['schema_pass_rate']:g}}}
  not_below_base: [json_valid_rate{", grounding" if story else ""}]
  min_improvement: {{score: {gate['score_gain']:g}}}
  max_field_regression: 0.05
  golden_min: {{schema_pass_rate: {gate['golden_schema_pass_rate']:g}}}
  # int4 against the fp32 export on the same test records: the tiny model's int4 lost 0-2 of 32 records'
  # schema_pass and under a point of score (README, "ONNX variants"); a real model deserves e.g. 0.02
  variants:
    int4: {{max_drop: {{schema_pass_rate: {gate['int4_schema_pass_drop']:g}, score: {gate['int4_score_drop']:g}}}}}
"""


def domain_yaml(name: str) -> str:
    spec = DOMAINS[name]
    prompt = "\n".join("  " + line for line in textwrap.wrap(spec["system_prompt"], width=88))
    return f"""name: {name}
description: {spec['description']}
base_model: tiny
system_prompt: >-
{prompt}
data:
  path: {name}/data.jsonl
  format: {spec['format']}
  group_key: {spec['group_key']}
  splits: {{train: 0.8, val: 0.1, test: 0.1}}
  seed: 17
output_schema: {name}/schema.json
train:
  max_seq_length: 384
  batch_size: 8
  grad_accum: 1
  max_steps: {spec.get('max_steps', 120)}
  backend: auto
  load_in_4bit: auto
  eval_steps: {spec.get('max_steps', 120) // 3}
sweep:
  space:
    lora_rank: [8, 16]
    learning_rate: [0.002]
    epochs: [3]
  search: grid
  num_samples: 1
  resources_per_trial: {{cpu: 1, gpu: 0}}
{quality_yaml(name)}"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="directory under which configs/... and src/... are written (default: repository root)")
    args = parser.parse_args(argv)
    configs = args.out_dir / "configs"
    dataset_inputs: dict[str, set[str]] = {}
    for name in DOMAIN_ORDER:
        lines, inputs = dataset_lines(name)
        dataset_inputs[name] = inputs
        write(configs / "domains" / name / "data.jsonl", "\n".join(lines) + "\n")
        write(configs / "domains" / name / "schema.json", json.dumps(DOMAINS[name]["schema"], indent=2,
                                                                     ensure_ascii=False) + "\n")
        write(configs / "domains" / f"{name}.yaml", domain_yaml(name))
        print(f"{name}: {len(lines)} records ({N_DUPLICATES} duplicates)")
    lines = caption_lines()
    write(configs / "domains" / "brand_captions" / "data.jsonl", "\n".join(lines) + "\n")
    write(configs / "domains" / "brand_captions" / "schema.json", json.dumps(CAPTION_SCHEMA, indent=2,
                                                                            ensure_ascii=False) + "\n")
    write(configs / "domains" / "brand_captions" / "brands.json", json.dumps({"brands": BRANDS}, indent=2,
                                                                            ensure_ascii=False) + "\n")
    write(configs / "domains" / "brand_captions.yaml", captions_yaml())
    print(f"brand_captions: {len(lines)} records ({N_DUPLICATES} duplicates), {len(BRANDS)} brands")
    corpus = corpus_text(dataset_inputs)
    size = len(corpus.encode("utf-8"))
    if size > CORPUS_MAX_BYTES:
        raise SystemExit(f"corpus is {size} bytes, over the {CORPUS_MAX_BYTES} byte budget")
    write(args.out_dir / "src" / "lorafleet" / "tiny_base" / "corpus.txt", corpus)
    print(f"tiny_base corpus: {CORPUS_DOCS} documents, {size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
