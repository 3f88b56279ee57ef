public enum PagerCorePlaceholder {}
