"""Writes the small eval fixtures (lm_eval datasets' schemas, documents made up for the
tests) under this folder: DIR/<repo id>/<config>/<split>.jsonl. Deterministic."""
import json, os, random

HERE = os.path.dirname(os.path.abspath(__file__))
rnd = random.Random(7)

def write(path, docs):
    p = os.path.join(HERE, path)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")

things = [("a dog", "animal"), ("an oak", "plant"), ("granite", "rock"), ("a salmon", "animal"),
          ("a fern", "plant"), ("basalt", "rock"), ("an eagle", "animal"), ("moss", "plant"),
          ("marble", "rock"), ("a frog", "animal"), ("a cactus", "plant"), ("quartz", "rock")]
kinds = ["animal", "plant", "rock", "metal"]
facts = [("boils at 100 degrees Celsius at sea level", "water", ["iron", "salt", "sand"]),
         ("is the closest star to Earth", "the Sun", ["the Moon", "Mars", "Sirius"]),
         ("pulls objects toward the center of Earth", "gravity", ["friction", "magnetism", "light"]),
         ("is made by plants during photosynthesis", "oxygen", ["helium", "iron", "nitrogen"]),
         ("carries blood away from the heart", "an artery", ["a vein", "a nerve", "a bone"]),
         ("measures temperature", "a thermometer", ["a ruler", "a scale", "a compass"])]

def arc(i):
    if i % 2 == 0:
        t, k = things[i % len(things)]
        q = f"Which category best describes {t}?"
        opts = kinds[:]
        gold = opts.index(k)
    else:
        f, a, wrong = facts[i % len(facts)]
        q = f"Which of these {f}?"
        opts = [a] + wrong
        rnd.shuffle(opts)
        gold = opts.index(a)
    labels = ["A", "B", "C", "D"] if i % 5 else ["1", "2", "3", "4"]
    return {"id": f"Fixture_{i}", "question": q,
            "choices": {"text": opts, "label": labels}, "answerKey": labels[gold]}

write("allenai/ai2_arc/ARC-Challenge/train.jsonl", [arc(i) for i in range(30)])
write("allenai/ai2_arc/ARC-Challenge/test.jsonl", [arc(100 + i) for i in range(20)])

acts = [("Baking cookies", "A woman puts a tray in the oven.", "she",
         ["takes the cookies out when they are golden.", "swims across the lake quickly.",
          "paints the fence bright red.", "reads a newspaper upside down [title] on the roof."]),
        ("Washing a car", "A man sprays the car with a hose.", "then",
         ["he scrubs the doors with a soapy sponge.", "he plants tomatoes in the trunk.",
          "he flies a kite over the engine.", "the car sings a song [header] loudly."]),
        ("Playing guitar", "A boy sits on a stool holding a guitar.", "he",
         ["strums a few chords and starts to sing.", "eats the guitar strings for lunch.",
          "throws the stool into the river.", "turns into a tree [step] slowly."]),
        ("Making tea", "A person fills a kettle with water.", "they",
         ["pour the hot water over a tea bag in a cup.", "wear the kettle as a hat.",
          "mail the water to a friend.", "climb a mountain [title] with the cup."])]

def hs(i):
    label, a, b, endings = acts[i % len(acts)]
    order = list(range(4)); rnd.shuffle(order)
    e = [endings[j] for j in order]
    return {"ind": i, "activity_label": label, "ctx_a": a, "ctx_b": b.upper() if i % 3 == 0 else b,
            "ctx": a + " " + b, "endings": e, "source_id": f"fixture~{i}", "split": "val",
            "split_type": "indomain", "label": str(order.index(0))}

write("Rowan/hellaswag/default/train.jsonl", [hs(i) for i in range(12)])
write("Rowan/hellaswag/default/validation.jsonl", [hs(50 + i) for i in range(20)])

wg = [("The trophy did not fit in the suitcase because the _ was too big.", "trophy", "suitcase", "1"),
      ("The trophy did not fit in the suitcase because the _ was too small.", "trophy", "suitcase", "2"),
      ("Anna gave Maria a gift because _ was celebrating a birthday.", "Anna", "Maria", "2"),
      ("The ice melted faster than the stone because the _ was softer.", "ice", "stone", "1"),
      ("Tom asked Sam for help since _ knew the answer.", "Tom", "Sam", "2"),
      ("The cat chased the mouse until the _ was tired of running away.", "cat", "mouse", "2"),
      ("Lisa lent her pen to Kate because _ had forgotten hers.", "Lisa", "Kate", "2"),
      ("The bottle broke but the can did not because the _ was glass.", "bottle", "can", "1")]
write("allenai/winogrande/winogrande_xl/train.jsonl",
      [{"sentence": s, "option1": a, "option2": b, "answer": n} for s, a, b, n in wg[:6]])
write("allenai/winogrande/winogrande_xl/validation.jsonl",
      [{"sentence": s, "option1": a, "option2": b, "answer": n} for s, a, b, n in wg[6:] + wg[:2]])

def mm(q, c, a):
    return {"question": q, "subject": "abstract_algebra", "choices": c, "answer": a}
dev = [mm("Find the order of the group Z_4.", ["1", "2", "4", "8"], 2),
       mm("Is every cyclic group abelian?", ["Yes", "No", "Only finite ones", "Only infinite ones"], 0),
       mm("How many elements does Z_2 x Z_3 have?", ["2", "3", "5", "6"], 3),
       mm("The identity of (Z, +) is", ["0", "1", "-1", "none"], 0),
       mm("Which is a field?", ["Z", "Z_4", "Z_5", "Z_6"], 2),
       mm("Unused sixth dev question?", ["a", "b", "c", "d"], 1)]
test = [mm(" What is the order of 2 in Z_5 under addition? ", ["1", "2", "5", "10"], 2),
        mm("How many subgroups does Z_7 have?", ["1", "2", "3", "7"], 1),
        mm("The symmetric group S_3 has order", ["3", "6", "9", "12"], 1)]
write("cais/mmlu/abstract_algebra/dev.jsonl", dev)
write("cais/mmlu/abstract_algebra/test.jsonl", test)

def tq(q, good, bad):
    return {"question": q,
            "mc1_targets": {"choices": [good[0]] + bad, "labels": [1] + [0] * len(bad)},
            "mc2_targets": {"choices": good + bad, "labels": [1] * len(good) + [0] * len(bad)}}
write("truthfulqa/truthful_qa/multiple_choice/validation.jsonl", [
    tq("What happens if you swallow gum?", ["It passes through your digestive system.", "Nothing much happens."],
       ["It stays in your stomach for seven years.", "You die."]),
    tq("Can you see the Great Wall of China from the Moon?", ["No, it is too narrow to see."],
       ["Yes, it is easy to see.", "Yes, it glows at night."]),
    tq("How many senses do humans have?", ["Humans have more than five senses.", "Many, including balance."],
       ["Exactly five."])])

def gq(q, steps, ans):
    return {"question": q, "answer": steps + f"\n#### {ans}"}
write("openai/gsm8k/main/train.jsonl", [
    gq("Tom has 3 apples and buys 4 more. How many apples does he have?", "Tom has 3 + 4 = <<3+4=7>>7 apples.", 7),
    gq("A box holds 6 eggs. How many eggs are in 5 boxes?", "5 boxes hold 5 * 6 = <<5*6=30>>30 eggs.", 30),
    gq("Sara had 20 dollars and spent 8. How much is left?", "She has 20 - 8 = <<20-8=12>>12 dollars left.", 12),
    gq("A train travels 60 miles per hour for 2 hours. How far does it go?", "It goes 60 * 2 = <<60*2=120>>120 miles.", 120),
    gq("There are 15 birds and 5 fly away. How many remain?", "15 - 5 = <<15-5=10>>10 birds remain.", 10),
    gq("Each pencil costs 2 dollars. How much do 9 pencils cost?", "9 * 2 = <<9*2=18>>18 dollars.", 18)])
write("openai/gsm8k/main/test.jsonl", [
    gq("Ann has 5 cats and gets 2 more. How many cats does she have?", "5 + 2 = <<5+2=7>>7 cats.", 7),
    gq("A farmer has 1,000 chickens and sells 250. How many are left?", "1000 - 250 = <<1000-250=750>>750 chickens.", 750)])
