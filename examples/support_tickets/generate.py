"""Writes the support_tickets example domain's data, deterministically (standard library only).

support_tickets/data.jsonl: about 360 tickets from 90 customers (the group key, customer_id).
support_tickets/golden.jsonl: 12 harder tickets: longer, mixed-language, two products named.
Run from anywhere: python generate.py
"""
import json
import random
from pathlib import Path

rng = random.Random(23)
OUT = Path(__file__).resolve().parent / "support_tickets"
LEVELS = ["low", "medium", "high", "urgent"]
PREFIX = {"th": "TH", "vi": "VN"}  # order ids: TH-48213, VN-90412
PRODUCTS = {
    "th": ["หมอนยางพารา Cloud", "ครีมกันแดด Sabai", "กระเป๋าผ้าไหม Siam", "เสื่อโยคะ Flow", "พัดลมตั้งโต๊ะ Breeze",
           "กาต้มน้ำไฟฟ้า Rama", "ผ้าห่มใยไผ่ Nara", "หูฟังไร้สาย Jazz", "น้ำมันมะพร้าว Coco Gold", "ชุดชาไทย ChaYen"],
    "vi": ["Nồi cơm điện Sunhouse", "Áo dài lụa Hà Đông", "Cà phê phin Trung Nguyên", "Nón lá Huế", "Nước mắm Phú Quốc",
           "Quạt đứng Điện Quang", "Túi xách cói Hội An", "Máy xay sinh tố Hòa Phát", "Chảo chống dính Bếp Việt",
           "Gối tựa lưng Hạnh Phúc"],
}
NAMES = {"th": ["Somchai", "Nattaya", "Kanya", "Arthit", "Ploy", "Wichai", "Siriporn", "Tanawat"],
         "vi": ["Nguyễn Thu Hà", "Trần Minh", "Lê Anh", "Phạm Quỳnh", "Đỗ Hùng", "Võ Thảo", "Bùi Long", "Hoàng Yến"]}
# (template, severe): severe = a double charge or a broken item. {p}: product, {o}: order id phrase.
ISSUES = {
    "billing": [("I was charged twice for {p}{o}, two identical payments on my card.", 1),
                ("My bank shows a double charge for {p}{o}.", 1),
                ("you took the money two times for {p}{o}!!", 1),
                ("The invoice for {p}{o} shows the wrong amount, I paid less at checkout.", 0),
                ("Can you send a VAT invoice for {p}{o}? The one I got has no tax id.", 0),
                ("The voucher code was not applied when I paid for {p}{o}.", 0)],
    "shipping": [("{p}{o} was supposed to arrive last week and tracking has not moved since.", 0),
                 ("The courier marked {p}{o} as delivered but nothing came.", 0),
                 ("Can I change the delivery address for {p}{o}? I moved last weekend.", 0),
                 ("Where is my parcel? {p}{o} has been in transit for ten days.", 0)],
    "refund": [("I returned {p}{o} two weeks ago and still have no refund.", 0),
               ("I would like my money back for {p}{o}, it is not what I expected.", 0),
               ("You approved the refund for {p}{o} but the money never reached my account.", 0),
               ("How do I get a refund for {p}{o}? I changed my mind.", 0)],
    "product_defect": [("{p}{o} arrived broken, the box was crushed.", 1),
                       ("{p}{o} is completely broken, I cannot use it at all.", 1),
                       ("The {p}{o} came cracked and I cannot use it.", 1),
                       ("{p}{o} has a small defect, it looks used.", 0),
                       ("The colour of {p}{o} is different from the photo and a seam is loose.", 0),
                       ("{p}{o} has a small scratch on the side.", 0)],
    "account": [("I cannot log in, the password reset email never arrives.", 0),
                ("Please change the email on my account, I no longer use the old one.", 0),
                ("My account got locked when I tried to check the status of {p}{o}.", 0),
                ("Please delete my account and all my data.", 0),
                ("I want to review {p}{o} but the site says my account is not verified.", 0)],
}
URGENT = ["This is urgent.", "URGENT please!", "I need this sorted ASAP.",
          "Please treat this as urgent, it is for a wedding."]
REPEAT = ["This is the third time I am writing about this.", "I already contacted you twice and nobody answered.",
          "third message this week!!", "Still waiting after my last two emails."]
MOODS = {  # mood: (openings, closings); the mood never changes the priority
    "polite": (["Hello,", "Dear support team,", "Hi there, I hope you are well."], ["Thank you very much,", "Kind regards,"]),
    "neutral": (["Hi,", "Good morning,", "Hello team,"], ["Thanks,", "Regards,", "Best,"]),
    "annoyed": (["Hi. Not happy right now.", "Hello, this is getting frustrating."], ["Please sort it out.", "Disappointed,"]),
    "angry": (["This is unacceptable!", "What is going on with your shop??"], ["Fix it or I leave a 1-star review.", "Furious,"]),
}
SUBJECTS = {"billing": ["Payment problem", "Invoice"], "shipping": ["Where is my order", "Delivery"],
            "refund": ["Refund", "Money back"], "product_defect": ["Faulty item", "Problem with product"],
            "account": ["Account", "Login problem"]}
ORDER_PHRASES = [" (order {})", ", order {}", " - order #{}", " [{}]"]
# Golden-set extras: a second product as context, a sentence in the customer's language, a distractor detail.
CONTEXT = ["Last month I bought {q} from you and it is perfect, no complaints there.",
           "My earlier ticket about {q}{qo} was solved, thank you; this one is a different problem.",
           "I was planning to order {q} as a gift too, but first I need this fixed.",
           "My sister loves the {q} she got from your shop, which is why I ordered again."]
NATIVE = {
    "th": {"billing1": "โดนตัดเงินซ้ำสองครั้งค่ะ", "billing0": "เรื่องการชำระเงินมีปัญหาค่ะ",
           "shipping0": "เรื่องการจัดส่งมีปัญหาค่ะ", "refund0": "อยากขอเงินคืนค่ะ", "product_defect1": "ของแตกมาเลยค่ะ",
           "product_defect0": "สินค้ามีปัญหาค่ะ", "account0": "มีปัญหาเรื่องบัญชีค่ะ", "urgent": "ช่วยด่วนด้วยนะคะ",
           "repeat": "นี่เป็นครั้งที่สามแล้วที่ติดต่อมานะคะ", "thanks": "ขอบคุณมากค่ะ"},
    "vi": {"billing1": "Mình bị trừ tiền hai lần.", "billing0": "Thanh toán bị sai.", "shipping0": "Đơn hàng giao bị trục trặc.",
           "refund0": "Mình muốn được hoàn tiền.", "product_defect1": "Hàng giao tới bị vỡ luôn rồi.",
           "product_defect0": "Sản phẩm bị lỗi.", "account0": "Tài khoản của mình bị lỗi.",
           "urgent": "Shop xử lý gấp giúp mình nhé.", "repeat": "Đây là lần thứ ba mình liên hệ rồi.",
           "thanks": "Cảm ơn shop nhiều nha."},
}
DETAILS = ["I paid by card on 3 March; my phone number is 081-234-5678 if you need to call.",
           "Photos are attached, and the box still has the label from the warehouse in Bình Dương.",
           "I am usually at work until 6 pm, so please leave any parcel with the guard downstairs.",
           "I have been a customer for three years and ordered maybe 15 times without a problem."]
# golden plan: (category, severe, urgent, repeat)
GOLDEN = [("billing", 1, 1, 1), ("shipping", 0, 0, 1), ("refund", 0, 1, 0), ("product_defect", 1, 1, 0),
          ("account", 0, 0, 0), ("billing", 0, 0, 0), ("product_defect", 1, 0, 1), ("shipping", 0, 1, 1),
          ("refund", 0, 0, 1), ("account", 0, 1, 0), ("product_defect", 0, 0, 0), ("billing", 1, 0, 0)]


def typo(text):
    """Swap two letters inside some longer English words (never inside a placeholder)."""
    words = text.split(" ")
    for i, w in enumerate(words):
        if len(w) >= 5 and w.isalpha() and w.isascii() and rng.random() < 0.25:
            j = rng.randrange(1, len(w) - 2)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def answer(category, severe, urgent, repeat, product, lang, order):
    """priority: urgency words count two; repeated contact, a double charge or a broken item one each."""
    priority = LEVELS[min(3, 2 * urgent + repeat + severe)]
    return json.dumps({"category": category, "priority": priority, "product": product, "order_id": order,
                       "language_of_product": lang if product else None}, ensure_ascii=False)


def issue(template, product, order):
    text = template.format(p=product or rng.choice(["my order", "the item", "my parcel"]),
                           o=rng.choice(ORDER_PHRASES).format(order) if order else "")
    return text[0].upper() + text[1:]


def record(cid, text, reply):
    return {"customer_id": cid, "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": reply}]}


def ticket(cid, name, market):
    category = rng.choice(list(ISSUES))
    template, severe = rng.choice(ISSUES[category])
    lang = market if rng.random() < 0.8 else rng.choice(["th", "vi"])
    product = rng.choice(PRODUCTS[lang]) if "{p}" in template and rng.random() < 0.85 else None
    order = f"{PREFIX[lang]}-{rng.randint(10000, 99999)}" if "{o}" in template and rng.random() < 0.7 else None
    urgent, repeat = rng.random() < 0.35, rng.random() < 0.35
    opening, closing = (rng.choice(part) for part in MOODS[rng.choice(list(MOODS))])
    body = issue(typo(template) if rng.random() < 0.3 else template, product, order)
    cues = " ".join(([rng.choice(URGENT)] if urgent else []) + ([rng.choice(REPEAT)] if repeat else []))
    if rng.random() < 0.6:
        subject = rng.choice(SUBJECTS[category] + ["Help", "Re: my order", "Question"])
        text = f"Subject: {subject}\n\n{opening}\n\n{body} {cues}".rstrip() + f"\n\n{closing}\n{name}"
    else:
        text = f"{name}: {opening} {body} {cues}".rstrip()
    return record(cid, text, answer(category, severe, urgent, repeat, product, lang, order))


def golden_ticket(n, category, severe, urgent, repeat):
    market, lang = rng.choice(["th", "vi"]), rng.choice(["th", "vi"])  # the customer's language, the product's
    product = rng.choice(PRODUCTS[lang])
    other = rng.choice([p for p in PRODUCTS["th"] + PRODUCTS["vi"] if p != product])
    order = f"{PREFIX[lang]}-{rng.randint(10000, 99999)}" if n % 4 else None
    old_prefix = PREFIX["th" if other in PRODUCTS["th"] else "vi"]
    old = f" (order {old_prefix}-{rng.randint(10000, 99999)}, closed)" if n % 3 == 0 else ""
    template = rng.choice([t for t, s in ISSUES[category] if s == severe and "{p}" in t])
    native = NATIVE[market]
    cues = [c for c, on in (("urgent", urgent), ("repeat", repeat)) if on]
    cue_text = " ".join(native[c] if n % 2 else rng.choice(URGENT if c == "urgent" else REPEAT) for c in cues)
    opening, closing = rng.choice(MOODS["polite"][0] + MOODS["annoyed"][0]), rng.choice(["Best,", "Regards,"])
    body = " ".join(filter(None, [rng.choice(CONTEXT).format(q=other, qo=old), issue(template, product, order),
                                  native[f"{category}{severe}"], rng.choice(DETAILS), cue_text, native["thanks"]]))
    text = f"Subject: {rng.choice(SUBJECTS[category])}\n\n{opening}\n\n{body}\n\n{closing}\n{rng.choice(NAMES[market])}"
    return record(f"golden-{n:02d}", text, answer(category, severe, urgent, repeat, product, lang, order))


def main():
    OUT.mkdir(exist_ok=True)
    rows = []
    for c in range(1, 91):
        market = rng.choice(["th", "vi"])
        name = rng.choice(NAMES[market])
        rows += [ticket(f"C{c:04d}", name, market) for _ in range(rng.randint(2, 6))]
    golden = [golden_ticket(n, *plan) for n, plan in enumerate(GOLDEN, start=1)]
    for path, items in (("data.jsonl", rows), ("golden.jsonl", golden)):
        (OUT / path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
        print(f"wrote {len(items)} records to {OUT / path}")


if __name__ == "__main__":
    main()
