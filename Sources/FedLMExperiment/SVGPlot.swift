import Foundation

/// A line chart as a standalone SVG file: one polyline per series, axes with ticks, a legend.
public struct SVGPlot {
    public struct Series {
        public var name: String
        public var points: [(x: Double, y: Double)]
        public init(name: String, points: [(x: Double, y: Double)]) {
            self.name = name
            self.points = points
        }
    }

    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var series: [Series]
    public var width = 640.0, height = 400.0

    public init(title: String, xLabel: String, yLabel: String, series: [Series]) {
        self.title = title
        self.xLabel = xLabel
        self.yLabel = yLabel
        self.series = series
    }

    static let colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]

    public func render() -> String {
        let all = series.flatMap(\.points)
        let (left, right, top, bottom) = (64.0, 160.0, 36.0, 48.0)
        let xs = all.map(\.x), ys = all.map(\.y)
        let x0 = min(0, xs.min() ?? 0), x1 = max((xs.max() ?? 1), x0 + 1e-9)
        var y0 = ys.min() ?? 0, y1 = ys.max() ?? 1
        if y1 - y0 < 1e-9 { y0 -= 0.5; y1 += 0.5 }
        let pad = (y1 - y0) * 0.05
        y0 -= pad; y1 += pad
        let pw = width - left - right, ph = height - top - bottom
        func px(_ x: Double) -> Double { left + (x - x0) / (x1 - x0) * pw }
        func py(_ y: Double) -> Double { top + (1 - (y - y0) / (y1 - y0)) * ph }
        func esc(_ s: String) -> String { s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;") }
        func tick(_ v: Double) -> String {
            abs(v) >= 1e6 ? String(format: "%.1fM", v / 1e6) : abs(v) >= 1e4 ? String(format: "%.0fk", v / 1e3) : String(format: "%.2f", v)
        }
        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(left)" y="20" font-size="14">\(esc(title))</text>
            <line x1="\(left)" y1="\(top + ph)" x2="\(left + pw)" y2="\(top + ph)" stroke="black"/>
            <line x1="\(left)" y1="\(top)" x2="\(left)" y2="\(top + ph)" stroke="black"/>

            """
        for i in 0...4 {
            let fx = x0 + (x1 - x0) * Double(i) / 4, fy = y0 + (y1 - y0) * Double(i) / 4
            svg += "<text x=\"\(px(fx))\" y=\"\(top + ph + 16)\" text-anchor=\"middle\">\(tick(fx))</text>\n"
            svg += "<text x=\"\(left - 6)\" y=\"\(py(fy) + 4)\" text-anchor=\"end\">\(tick(fy))</text>\n"
            svg += "<line x1=\"\(left)\" y1=\"\(py(fy))\" x2=\"\(left + pw)\" y2=\"\(py(fy))\" stroke=\"#eee\"/>\n"
        }
        svg += "<text x=\"\(left + pw / 2)\" y=\"\(height - 8)\" text-anchor=\"middle\">\(esc(xLabel))</text>\n"
        svg += "<text x=\"14\" y=\"\(top + ph / 2)\" transform=\"rotate(-90 14 \(top + ph / 2))\" text-anchor=\"middle\">\(esc(yLabel))</text>\n"
        for (i, s) in series.enumerated() where !s.points.isEmpty {
            let color = Self.colors[i % Self.colors.count]
            let path = s.points.map { String(format: "%.1f,%.1f", px($0.x), py($0.y)) }.joined(separator: " ")
            svg += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(path)\"/>\n"
            let ly = top + 8 + Double(i) * 18
            svg += "<line x1=\"\(left + pw + 12)\" y1=\"\(ly)\" x2=\"\(left + pw + 32)\" y2=\"\(ly)\" stroke=\"\(color)\" stroke-width=\"2\"/>"
            svg += "<text x=\"\(left + pw + 36)\" y=\"\(ly + 4)\">\(esc(s.name))</text>\n"
        }
        return svg + "</svg>\n"
    }
}
