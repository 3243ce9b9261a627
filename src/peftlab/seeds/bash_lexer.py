"""Bash's tokens as the seeds' run scripts use them, read statically (seeds/shell.py interprets them):
words made of parts (literal, quoted, variable, command substitution, operator), cut into statements at
newlines and control operators, with bash's rules for quotes, `\\`-newlines and comments."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import PeftlabError

REDIRECTION = re.compile(r"&>>?|[<>]&|>>|>\||<>|<<<?|<\(|>\(|[<>]")
HINT = "statically; run the python command after `peftlab train --`"


@dataclass
class Statement:
    line: int
    sep: str            # the operator before it: "\n", ";", "&", "&&", "||", "|"
    words: list         # each a list of (kind, text): lit, q (quoted), var, qvar (quoted var), sub, op
    raw: str

    @property
    def head(self) -> str | None:
        return plain_word(self.words[0]) if self.words else None


def plain_word(word) -> str | None:
    return "".join(text for _, text in word) if all(kind == "lit" for kind, _ in word) else None


class Lexer:
    """Bash's tokens: words of parts, cut into statements at newlines and control operators."""

    def __init__(self, text: str, source: str, line: int = 1):
        self.text, self.source, self.i, self.line = text.replace("\r\n", "\n"), source, 0, line
        self.out, self.words, self.parts, self.sep, self.start, self.redirect = [], [], None, "\n", (0, line), False

    def error(self, what: str, line: int | None = None) -> PeftlabError:
        return PeftlabError(f"{self.source}:{line or self.line}: {what}")

    def statements(self) -> list[Statement]:
        text = self.text
        while self.i < len(text):
            char, after = text[self.i], text[self.i + 1:self.i + 2]
            if self.quoting(char, after):
                continue
            if char == "#" and self.parts is None:
                self.i = len(text) if text.find("\n", self.i) < 0 else text.find("\n", self.i)
            elif char in "<>" or text.startswith("&>", self.i):
                self.redirection()
            elif char in "\n;&|()":
                self.operator(text[self.i:self.i + 2])
            else:
                home = char == "~" and self.parts is None and after in ("", "/", " ", "\n")
                if char in " \t":
                    self.end_word()
                else:
                    self.add(*(("qvar", "HOME") if home else ("lit", char)))
                self.i += 1
        self.end_statement("\n")
        return self.out

    def one_word(self) -> list:
        """The text as the parts of one word (the `word` of `${NAME:-word}`)."""
        while self.i < len(self.text):
            if not self.quoting(self.text[self.i], self.text[self.i + 1:self.i + 2]):
                self.add("lit", self.text[self.i])
                self.i += 1
        return self.parts or []

    def quoting(self, char: str, after: str) -> bool:
        """A backslash, quotes, `$` or a backtick at self.i: read as a part (True), or not one (False)."""
        if char == "\\":                      # \<newline> joins lines; \c is a quoted c
            self.line, self.i = self.line + (after == "\n"), self.i + 2
            if after != "\n":
                self.add("q", after or "\\")
        elif char == "'":
            end = self.text.find("'", self.i + 1)
            if end < 0:
                raise self.error("unterminated ' quote")
            self.add("q", self.text[self.i + 1:end])
            self.line, self.i = self.line + self.text.count("\n", self.i, end), end + 1
        elif char == '"':
            self.double_quoted()
        elif char in "$`":
            self.add(*self.dollar(quoted=False))
        return char in "\\'\"$`"

    def add(self, kind: str, text: str) -> None:
        if self.parts is None:
            self.parts = []
            self.start = (self.i, self.line) if not self.words else self.start
        if self.parts and self.parts[-1][0] == kind and kind in ("lit", "q"):
            self.parts[-1] = (kind, self.parts[-1][1] + text)
        else:
            self.parts.append((kind, text))

    def end_word(self) -> None:
        if self.parts is not None and not self.redirect:
            self.words.append(self.parts)
        elif self.parts is not None:
            self.redirect = False              # a redirection's target: the shell's, not the command's
        self.parts = None

    def end_statement(self, next_sep: str) -> None:
        self.end_word()
        if self.redirect:
            raise self.error("a redirection without a target")
        if self.words:
            self.out.append(Statement(self.start[1], self.sep, self.words, self.text[self.start[0]:self.i]))
            self.sep, self.words = next_sep, []
        elif next_sep != "\n":
            self.sep = next_sep                # `a &&` <newline> `b`

    def operator(self, two: str) -> None:
        if two == ";;" or two[0] in "()":      # case, subshells, functions, arrays: refused when read
            self.end_word()
            self.add("op", two if two == ";;" else two[0])
            self.i += len(self.parts[0][1])
            return self.end_word()
        op = two if two in ("&&", "||") else two[0]
        self.end_statement(op)
        self.i, self.line = self.i + (2 if two in ("&&", "||", "|&") else 1), self.line + (op == "\n")

    def redirection(self) -> None:
        if self.parts is not None and (plain_word(self.parts) or "x").isdigit():
            self.parts = None                  # the 2 of 2>&1
        self.end_word()
        op = REDIRECTION.match(self.text, self.i)[0]
        if op in ("<<", "<<<", "<(", ">("):
            raise self.error(f"cannot read '{op}' {HINT}")
        self.i += len(op)
        target = re.compile(r"[ \t]*(\d+|-)(?=[\s;&|]|$)").match(self.text, self.i) if op.endswith("&") else None
        self.i, self.redirect = (target.end(), False) if target else (self.i, True)

    def double_quoted(self) -> None:
        text, start = self.text, self.line
        self.i += 1
        self.add("q", "")                      # "" is one (empty) word
        while self.i < len(text) and text[self.i] != '"':
            char, after = text[self.i], text[self.i + 1:self.i + 2]
            if char == "\\" and after in ('$', '`', '"', '\\', '\n'):
                self.add("q", "" if after == "\n" else after)
                self.line, self.i = self.line + (after == "\n"), self.i + 2
            elif char in "$`":
                self.add(*self.dollar(quoted=True))
            else:
                self.add("q", char)
                self.line, self.i = self.line + (char == "\n"), self.i + 1
        if self.i >= len(text):
            raise self.error("unterminated \" quote", start)
        self.i += 1

    def dollar(self, quoted: bool) -> tuple[str, str]:
        """`$NAME`, `${...}`, `$(...)` or a backtick substitution at self.i: one part."""
        text, i = self.text, self.i
        after = text[i + 1:i + 2]
        if text[i] == "$" and (text.startswith("$((", i) or (after == "'" and not quoted)):
            raise self.error(f"cannot read '{text[i:i + 2 + (after == '(')]}' {HINT}")
        if text[i] == "`" or after in ("(", "{"):
            end = text.find("`", i + 1) if text[i] == "`" else closing_at(text, i + 1)
            if end < 0:
                raise self.error(f"unterminated {text[i] if text[i] == '`' else text[i:i + 2]}")
            self.line, self.i = self.line + text.count("\n", i, end), end + 1
            if text[i] == "$" and after == "{":
                return ("qvar" if quoted else "var"), text[i + 2:end]
            return "sub", text[i:end + 1]
        match = re.compile(r"[A-Za-z_]\w*|\d|[@*#?$!-]").match(text, i + 1)
        self.i = match.end() if match else i + 1
        return ("qvar" if quoted else "var", match[0]) if match else ("q" if quoted else "lit", "$")


def closing_at(text: str, start: int) -> int:
    """The index of the bracket closing text[start] ( `(` or `{` ), or -1."""
    opener, depth = text[start], 0
    for index in range(start, len(text)):
        depth += (text[index] == opener) - (text[index] == (")" if opener == "(" else "}"))
        if depth == 0:
            return index
    return -1
