"""Challenge leaderboards: TUS-REC (2025 and 2024 normalisation rules) and
ReMIND2Reg (Learn2Reg-style Wilcoxon rank scores), rendered as Markdown,
self-contained HTML or JSON."""
