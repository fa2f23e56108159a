"""The tokenizer agreement corpus: deterministic text that covers what a
tokenizer has to get right (used by make_tokenizer_golden.py and
make_tiny_tokenizer.py).

Sources are offline and stable on Debian 12: the licence texts in
/usr/share/common-licenses (English prose), Python 3.11's standard library
(code), hand-written sentences in many scripts, and generated strings
(numbers, whitespace, control characters, emoji, special-token text, long
words, random code points from every plane). `build()` returns a list of
entries: {"category": ..., "text": str} or, for ill-formed UTF-8,
{"category": "invalid_utf8", "bytes": bytes}.
"""

import glob
import os
import random

BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"

SENTENCES = {
    "chinese": [
        "今天天气很好，我们去公园散步吧。",
        "深度学习模型需要大量的数据和计算资源。",
        "这个问题的答案并不简单，需要仔细思考。",
        "我昨天在图书馆读了一本关于历史的书。",
        "人工智能正在改变我们的生活方式。",
        "请把窗户打开，房间里太热了。",
        "他说：“明天见！”然后就走了。",
        "混合专家模型（MoE）只激活一部分参数。",
        "北京是中国的首都，有三千多年的历史。",
        "数字１２３和ABC也会出现在中文里。",
    ],
    "japanese": [
        "東京は日本の首都です。",
        "今日はとても暑いですね。",
        "私はコーヒーが好きですが、紅茶も飲みます。",
        "カタカナで書くとコンピューターになります。",
        "この文章には漢字とひらがなとカタカナが混ざっています。",
        "ｶﾀｶﾅの半角文字もあります。",
        "「こんにちは」と彼女は言った。",
        "機械学習のモデルを訓練するには時間がかかる。",
    ],
    "korean": [
        "안녕하세요, 만나서 반갑습니다.",
        "오늘은 날씨가 정말 좋네요.",
        "한국어는 한글로 씁니다.",
        "이 모델은 여러 언어를 이해할 수 있습니다.",
        "서울에서 부산까지 기차로 세 시간 걸려요.",
        "ᄀᄁᄂ 자모와 ㄱㄴㄷ 호환 자모도 있습니다.",
    ],
    "arabic": [
        "مرحبا بالعالم، كيف حالك اليوم؟",
        "اللغة العربية تكتب من اليمين إلى اليسار.",
        "الأرقام العربية: ٠١٢٣٤٥٦٧٨٩ والأرقام ١٢٣.",
        "ذهبت إلى السوق واشتريت بعض الفواكه.",
        "الذكاء الاصطناعي يغير العالم.",
    ],
    "other_scripts": [
        "Привет, мир! Как дела?",
        "Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "Γειά σου Κόσμε! Η γλώσσα είναι ελληνική.",
        "שלום עולם, מה שלומך?",
        "नमस्ते दुनिया, आप कैसे हैं? संख्याएँ: १२३४५",
        "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ",
        "Xin chào thế giới! Tiếng Việt có nhiều dấu.",
        "Zażółć gęślą jaźń. Příliš žluťoučký kůň úpěl ďábelské ódy.",
        "Ærøskøbing, Åland, Straße, façade, naïve, coöperate.",
        "ሰላም ለዓለም። ქართული ენა. Հայերեն լեզու.",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝒮𝒸𝓇𝒾𝓅𝓉 and ℌ𝔢𝔩𝔩𝔬.",
        "Ｆｕｌｌｗｉｄｔｈ　ｌａｔｉｎ　ａｎｄ　１２３．",
    ],
}

EMOJI = [
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵🇺🇸🇨🇳", "1️⃣2️⃣#️⃣", "❤️‍🔥", "🧑🏿‍💻", "👩‍❤️‍💋‍👨",
    "🐉🐲", "✊🏻✊🏼✊🏽✊🏾✊🏿", "🫠🫨🪿", "☺︎☺️", "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
]

WHITESPACE = ["\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2028", "\u2029", "\u0085", "\u180e",
              "\u2000", "\u2003", "\u200a", "\u202f", "\u205f", "\u1680", "\x0b", "\x0c", "  ", "   "]

CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x1b", "\x1f", "\x7f", "\x80", "\x9f", "\u200b", "\u200c",
           "\u200d", "\ufeff", "\u200e", "\u202e", "\u2066", "\ufffd", "\ufff9", "\U000e0001"]

CODE = {
    "cpp": 'template <typename T>\nstd::vector<T> Merge(const std::vector<T>& a) {\n  for (size_t i = 0; i < a.size(); ++i) {\n    if (a[i] != T{}) return {a.begin(), a.end()};\n  }\n  return {};  // nothing\n}\n',
    "rust": 'fn main() -> Result<(), Box<dyn Error>> {\n    let v: Vec<u32> = (0..10).map(|x| x * 2).collect();\n    println!("{:?} {}", v, v.len());\n    Ok(())\n}\n',
    "js": 'const f = async (x) => {\n\tconst r = await fetch(`/api/${x}?q=1&b=2`);\n\treturn r.ok ? r.json() : null; // ok?\n};\n',
    "go": 'package main\n\nimport "fmt"\n\nfunc main() {\n\tm := map[string]int{"a": 1}\n\tfor k, v := range m {\n\t\tfmt.Printf("%s=%d\\n", k, v)\n\t}\n}\n',
    "java": 'public final class Main {\n    public static void main(String[] args) {\n        System.out.println("Hello, " + args.length);\n    }\n}\n',
    "sql": "SELECT u.id, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id\nWHERE o.created_at >= '2024-01-01' GROUP BY u.id HAVING n > 3;\n",
    "html": '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Test &amp; more</title></head>\n<body><p class="x">Hi&nbsp;there</p></body></html>\n',
    "shell": '#!/bin/sh\nset -eu\nfor f in *.txt; do\n  grep -c "^$" "$f" || echo "none: $f" >&2\ndone\n',
    "latex": r"\begin{equation} E = mc^2 \quad \int_0^\infty e^{-x^2}\,dx = \frac{\sqrt{\pi}}{2} \end{equation}",
    "json": '{"name": "dsv2", "ids": [1, 2, 3], "nested": {"ok": true, "pi": 3.14159}}',
}


def _licence_paragraphs():
    out = []
    for path in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isdir(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        for para in text.split("\n\n"):
            para = para.strip("\n")
            if 20 <= len(para) <= 1500:
                out.append(para)
    return out


def _python_sources():
    out = []
    for name in ["json/decoder.py", "textwrap.py", "heapq.py", "bisect.py", "fractions.py", "shlex.py",
                 "colorsys.py", "difflib.py", "string.py", "statistics.py"]:
        path = os.path.join("/usr/lib/python3.11", name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                out.append(f.read())
    return out


def _random_code_point(rng):
    """A random scalar value, weighted toward interesting blocks."""
    blocks = [(0x20, 0x7E), (0x80, 0x2FF), (0x300, 0x36F), (0x370, 0x52F), (0x590, 0x6FF), (0x900, 0xDFF),
              (0x1100, 0x11FF), (0x1C80, 0x1CBF), (0x1E00, 0x1FFF), (0x2000, 0x206F), (0x2070, 0x2BFF),
              (0x2E80, 0x2FFF), (0x3000, 0x30FF), (0x3100, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
              (0xA000, 0xA7FF), (0xAC00, 0xD7FF), (0xE000, 0xF8FF), (0xF900, 0xFFFF), (0x10000, 0x1FFFF),
              (0x1F300, 0x1FAFF), (0x20000, 0x2FFFF), (0x30000, 0x323AF), (0xE0000, 0xE01EF),
              (0x10D40, 0x10D8F), (0x11F00, 0x11F5F), (0x1E4D0, 0x1E4FF), (0x0, 0x10FFFF)]
    while True:
        lo, hi = rng.choice(blocks)
        c = rng.randint(lo, hi)
        if not 0xD800 <= c <= 0xDFFF:
            return chr(c)


def _numbers(rng):
    out = []
    for _ in range(40):
        out.append(str(rng.randint(0, 10 ** rng.randint(1, 12))))
    for _ in range(20):
        out.append(f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 8)}f}")
    for n in [50, 100, 333, 1000]:
        out.append("".join(rng.choice("0123456789") for _ in range(n)))
    out += ["3.14159265358979323846264338327950288419716939937510", "1,234,567,890", "1_000_000",
            "+1 (555) 010-9999", "2024-05-06T12:34:56.789Z", "0xDEADBEEF 0b1011 0o755 1e-9 6.02e23",
            "v1.2.3-rc.4+build.5", "IPv4 192.168.0.1, IPv6 fe80::1ff:fe23:4567:890a",
            "١٢٣٤٥٦٧٨٩٠ ۱۲۳ १२३ ১২৩ ๑๒๓ １２３ ①②③ ⅠⅡⅢ ½¾ ²³ 𝟙𝟚𝟛", "1st 2nd 3rd 4th 10%", "$1,000.00 €20 ¥300 £4.5"]
    for _ in range(30):
        out.append(" ".join(str(rng.randint(0, 99999)) for _ in range(rng.randint(2, 12))))
    return out


def build(seed=0):
    rng = random.Random(seed)
    entries = []

    def add(category, text):
        entries.append({"category": category, "text": text})

    prose = _licence_paragraphs()
    for para in rng.sample(prose, min(360, len(prose))):
        add("english", para)
    for s in ["Hello world", "Hello, world!", " leading space", "trailing space ", "  two leading",
              "I'm, you're, they've, we'll, it'd, she's, don't", "The quick brown fox jumps over the lazy dog.",
              "ALL CAPS SENTENCE", "MiXeD CaSe wOrDs", "e.g. i.e. etc. U.S.A. Mr. Dr.", "a", "", " ", "\n"]:
        add("english", s)

    sources = _python_sources()
    for src in sources:
        lines = src.split("\n")
        for _ in range(24):
            start = rng.randrange(len(lines))
            add("code_python", "\n".join(lines[start:start + rng.randint(1, 25)]))
    for lang, snippet in CODE.items():
        add("code_" + lang, snippet)
        for _ in range(6):
            a = rng.randrange(len(snippet))
            add("code_" + lang, snippet[a:a + rng.randint(5, 120)])

    for n in _numbers(rng):
        add("numbers", n)

    for lang, sentences in SENTENCES.items():
        for s in sentences:
            add(lang, s)
        for _ in range(60):
            picks = rng.sample(sentences, rng.randint(1, min(4, len(sentences))))
            sep = rng.choice(["", " ", "\n", "  ", "\u3000", "\t"])
            add(lang, sep.join(picks))

    for _ in range(80):
        parts = [rng.choice(EMOJI) for _ in range(rng.randint(1, 6))]
        joiners = [rng.choice(["", " ", "text", "\u200d", "!", "中文"]) for _ in parts]
        add("emoji", "".join(p + j for p, j in zip(parts, joiners)))

    for _ in range(150):
        words = rng.choice(prose).split()[:rng.randint(1, 12)] or ["x"]
        text = ""
        for w in words:
            text += w + "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 3)))
        add("whitespace", text)
    for ws in WHITESPACE:
        add("whitespace", ws)
        add("whitespace", ws * 5)
        add("whitespace", "a" + ws + "b" + ws)
    add("whitespace", "line one  \nline two \t\n\n  \nlast   ")
    add("whitespace", "\r\n\r\n  \r\n")

    for _ in range(100):
        text = "".join(rng.choice(CONTROL) + rng.choice(["ab", " ", "中", "1", ""]) for _ in range(rng.randint(1, 8)))
        add("control", text)

    specials = [BOS, EOS, "<\uff5cbegin", "begin\u2581of\u2581sentence\uff5c>", "<|endoftext|>", "<s>", "</s>"]
    for _ in range(120):
        text = ""
        for _ in range(rng.randint(1, 5)):
            text += rng.choice(specials) + rng.choice(["", " ", "  ", "\n", "hello", " world ", "中文", "12"])
        add("special_text", text)
    add("special_text", BOS + "User: hi\n\nAssistant:")
    add("special_text", BOS * 3 + EOS * 2)

    added = ["<|lstrip|>", "<|rstrip|>", "<|both|>", "hello", "ÜBER", "world", "ab", "foo bar", " sp", "QQ",
             "qq", "Ġhello", "helloworld", "_hello_", "héllo", "hello2", "über", "xab", "foo  bar"]
    for _ in range(120):
        text = ""
        for _ in range(rng.randint(1, 6)):
            text += rng.choice(["", " ", "  ", "\t", "\n", "\u3000", "x", ".", "中"]) + rng.choice(added)
        add("added_tokens", text + rng.choice(["", " ", "  ", "!"]))

    long_words = ["a" * 5000, "ab" * 3000, "abc" * 1500, "supercalifragilisticexpialidocious" * 30,
                  "https://example.com/" + "/".join("seg%d" % i for i in range(300)) + "?q=" + "x" * 200,
                  "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
                          for _ in range(8000)),
                  "中" * 3000, "😀" * 500, " " * 2000, "\n" * 500, "-" * 1000 + "=" * 1000]
    for w in long_words:
        add("long_word", w)
    for _ in range(30):
        add("long_word", "".join(rng.choice("etaoinshrdlu") for _ in range(rng.randint(60, 600))))

    for _ in range(250):
        add("random_unicode", "".join(_random_code_point(rng) for _ in range(rng.randint(1, 40))))

    pool = [e["text"] for e in entries if e["text"]]
    for _ in range(250):
        add("mixed", "".join(rng.choice(pool)[:rng.randint(1, 80)] for _ in range(rng.randint(2, 5))))

    invalid = [b"\xff", b"\xc0\xaf", b"abc\x80def", b"\xe4\xb8", b"\xe4\xb8abc", b"\xf0\x9f\x98", b"\xed\xa0\x80",
               b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"ok \xfe\xfe ok", b"\xe0\x80\x80", b"\xc3",
               b"caf\xe9", b"\xe6\x97\xa5\xe6\x9c", "中文".encode() + b"\x80" + BOS.encode()[:4],
               b"\x00\xff\x00", BOS.encode()[:-1] + b"\xff"]
    for raw in invalid:
        entries.append({"category": "invalid_utf8", "bytes": raw})
    for _ in range(30):
        raw = bytearray(rng.choice(pool).encode()[:60])
        for _ in range(rng.randint(1, 4)):
            if raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        entries.append({"category": "invalid_utf8", "bytes": bytes(raw)})
    return entries
